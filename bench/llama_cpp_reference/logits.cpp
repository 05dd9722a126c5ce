// Runs a GGUF model through llama.cpp and writes the reference the engine's
// tests compare against: the logits at every position of a fixed token
// sequence, then 64 greedily generated tokens. Built against llama.cpp's
// library by bench/llama_cpp_reference.sh; not part of the project's build.
//
// Before its logits are trusted, llama.cpp is checked against itself: the
// reference run (F32 KV cache, the whole sequence in one batch) is repeated
// with an F16 KV cache and one token per batch, and the differences printed.
//
// Output (little-endian): int32 positions, int32 vocab, int32 generated;
// positions x vocab float32 logits; generated int32 token ids.
// Usage: logits MODEL.gguf OUT.logits [CONTEXT]   (default 128; 64 greedy tokens,
// fewer where the context ends first)
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "llama.h"

namespace {

// The token sequence the tests use; ids within the synthetic 297-token vocabulary.
const std::vector<llama_token> kTokens = {1,   40, 200, 7,  260, 99, 3,   5,
                                          120, 33, 271, 15, 288, 64, 180, 296};

struct Run {
  std::vector<float> logits;  // positions x vocab
  std::vector<llama_token> generated;
};

int argmax(const float* v, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i) {
    if (v[i] > v[best]) best = i;
  }
  return best;
}

bool run(llama_model* model, int context, int generated, bool f16_cache, bool one_token_batches,
         Run& out) {
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = context;
  cp.n_batch = context;
  cp.n_ubatch = one_token_batches ? 1 : context;
  cp.n_threads = 2;
  cp.n_threads_batch = 2;
  cp.type_k = f16_cache ? GGML_TYPE_F16 : GGML_TYPE_F32;
  cp.type_v = f16_cache ? GGML_TYPE_F16 : GGML_TYPE_F32;
  cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
  cp.swa_full = true;
  llama_context* ctx = llama_init_from_model(model, cp);
  if (ctx == nullptr) return false;
  const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
  const int n = static_cast<int>(kTokens.size());
  llama_batch batch = llama_batch_init(context, 0, 1);
  for (int i = 0; i < n; ++i) {
    batch.token[i] = kTokens[static_cast<size_t>(i)];
    batch.pos[i] = i;
    batch.n_seq_id[i] = 1;
    batch.seq_id[i][0] = 0;
    batch.logits[i] = 1;
  }
  batch.n_tokens = n;
  bool ok = llama_decode(ctx, batch) == 0;
  out.logits.clear();
  for (int i = 0; ok && i < n; ++i) {
    const float* l = llama_get_logits_ith(ctx, i);
    out.logits.insert(out.logits.end(), l, l + n_vocab);
  }
  llama_token next = argmax(out.logits.data() + static_cast<size_t>(n - 1) * n_vocab, n_vocab);
  for (int g = 0; ok && g < generated; ++g) {
    out.generated.push_back(next);
    batch.token[0] = next;
    batch.pos[0] = n + g;
    batch.logits[0] = 1;
    batch.n_tokens = 1;
    ok = llama_decode(ctx, batch) == 0;
    if (ok) next = argmax(llama_get_logits_ith(ctx, 0), n_vocab);
  }
  llama_batch_free(batch);
  llama_free(ctx);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 && argc != 4) {
    std::fprintf(stderr, "usage: %s MODEL.gguf OUT.logits [CONTEXT]\n", argv[0]);
    return 2;
  }
  const int context = argc == 4 ? std::atoi(argv[3]) : 128;
  const int generated = std::min(64, context - static_cast<int>(kTokens.size()));
  if (generated < 0) {
    std::fprintf(stderr, "a context of %d is shorter than the %zu tokens\n", context,
                 kTokens.size());
    return 2;
  }
  llama_log_set(
      [](ggml_log_level level, const char* text, void*) {
        if (level >= GGML_LOG_LEVEL_WARN) std::fputs(text, stderr);
      },
      nullptr);
  llama_backend_init();
  llama_model_params mp = llama_model_default_params();
  mp.n_gpu_layers = 0;
  llama_model* model = llama_model_load_from_file(argv[1], mp);
  if (model == nullptr) {
    std::fprintf(stderr, "llama.cpp cannot load %s\n", argv[1]);
    return 1;
  }
  Run reference, variant;
  if (!run(model, context, generated, false, false, reference) ||
      !run(model, context, generated, true, true, variant)) {
    std::fprintf(stderr, "llama.cpp failed to evaluate %s\n", argv[1]);
    return 1;
  }
  const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
  const int n = static_cast<int>(kTokens.size());
  double worst = 0, scale = 0;
  int top1_same = 0;
  for (int i = 0; i < n; ++i) {
    const float* a = reference.logits.data() + static_cast<size_t>(i) * n_vocab;
    const float* b = variant.logits.data() + static_cast<size_t>(i) * n_vocab;
    for (int v = 0; v < n_vocab; ++v) {
      worst = std::max(worst, static_cast<double>(std::fabs(a[v] - b[v])));
      scale = std::max(scale, static_cast<double>(std::fabs(a[v])));
    }
    top1_same += argmax(a, n_vocab) == argmax(b, n_vocab);
  }
  int gen_same = 0;
  while (gen_same < generated && reference.generated[static_cast<size_t>(gen_same)] ==
                                     variant.generated[static_cast<size_t>(gen_same)]) {
    ++gen_same;
  }
  std::printf(
      "%s: max |logit| %.3f; F16 KV cache, one token per batch vs F32 KV, one batch: max abs "
      "diff %.5f, top-1 same at %d/%d positions, greedy same for %d/%d tokens\n",
      argv[1], scale, worst, top1_same, n, gen_same, generated);
  FILE* f = std::fopen(argv[2], "wb");
  if (f == nullptr) {
    std::fprintf(stderr, "cannot write %s\n", argv[2]);
    return 1;
  }
  const int32_t header[3] = {n, n_vocab, generated};
  bool written = std::fwrite(header, sizeof header, 1, f) == 1 &&
                 std::fwrite(reference.logits.data(), sizeof(float), reference.logits.size(), f) ==
                     reference.logits.size() &&
                 std::fwrite(reference.generated.data(), sizeof(llama_token), generated, f) ==
                     static_cast<size_t>(generated);
  written = std::fclose(f) == 0 && written;
  llama_model_free(model);
  llama_backend_free();
  return written ? 0 : 1;
}
