// The optimized forward pass against a plain float reference, on tiny random
// models of every supported type and architecture, and on the real models.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>

#include "common/json_syntax.h"
#include "engine/engine.h"
#include "support/gguf_copy.h"
#include "support/test_paths.h"

namespace foreshore::engine {
namespace {

// A deliberately naive forward pass: weights dequantized to float, math in
// double, no KV cache (recomputes the whole sequence), no threads.
bool is_quantized(TensorType t) {
  return t != TensorType::kF32 && t != TensorType::kF16 && t != TensorType::kBF16;
}

class ReferenceModel {
 public:
  explicit ReferenceModel(const Model& m) : m_(m), c_(m.config()) {}

  std::vector<double> logits(const std::vector<TokenId>& tokens) const {
    const int64_t d = c_.embedding_length, hd = c_.head_dim;
    const int64_t n = static_cast<int64_t>(tokens.size());
    std::vector<std::vector<double>> x(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) x[t] = row(m_.token_embedding(), tokens[t]);
    for (const auto& l : m_.layers()) {
      std::vector<std::vector<double>> q(n), k(n), v(n);
      for (int64_t t = 0; t < n; ++t) {
        auto xn = norm(x[t], l.attn_norm);
        q[t] = matvec(l.wq, xn, l.bq);
        k[t] = matvec(l.wk, xn, l.bk);
        v[t] = matvec(l.wv, xn, l.bv);
        rope(q[t], t);
        rope(k[t], t);
      }
      for (int64_t t = 0; t < n; ++t) {
        std::vector<double> att(static_cast<size_t>(c_.head_count * hd), 0.0);
        for (int32_t h = 0; h < c_.head_count; ++h) {
          const int32_t g = h / (c_.head_count / c_.head_count_kv);
          std::vector<double> s(static_cast<size_t>(t + 1));
          double mx = -1e300;
          for (int64_t p = 0; p <= t; ++p) {
            double dot = 0;
            for (int64_t i = 0; i < hd; ++i) dot += q[t][h * hd + i] * k[p][g * hd + i];
            s[p] = dot / std::sqrt(static_cast<double>(hd));
            mx = std::max(mx, s[p]);
          }
          double sum = 0;
          for (auto& e : s) sum += (e = std::exp(e - mx));
          for (int64_t p = 0; p <= t; ++p)
            for (int64_t i = 0; i < hd; ++i) att[h * hd + i] += s[p] / sum * v[p][g * hd + i];
        }
        auto o = matvec(l.wo, att, nullptr);
        for (int64_t i = 0; i < d; ++i) x[t][i] += o[i];
        auto xn = norm(x[t], l.ffn_norm);
        auto gate = matvec(l.w_gate, xn, nullptr);
        auto up = matvec(l.w_up, xn, nullptr);
        for (size_t i = 0; i < gate.size(); ++i)
          gate[i] = gate[i] / (1 + std::exp(-gate[i])) * up[i];
        auto down = matvec(l.w_down, gate, nullptr);
        for (int64_t i = 0; i < d; ++i) x[t][i] += down[i];
      }
    }
    return matvec(m_.output(), norm(x[n - 1], m_.output_norm()), nullptr);
  }

 private:
  std::vector<double> row(const WeightMatrix& w, int64_t r) const {
    std::vector<float> f(static_cast<size_t>(w.cols));
    EXPECT_TRUE(dequantize_row(w.type, static_cast<const uint8_t*>(w.data) + r * w.row_bytes,
                               f.data(), w.cols));
    return {f.begin(), f.end()};
  }
  std::vector<double> matvec(const WeightMatrix& w, const std::vector<double>& x,
                             const float* bias) const {
    std::vector<double> y(static_cast<size_t>(w.rows));
    if (is_quantized(w.type)) {
      // Quantized weights are defined to meet 8-bit activations; the scalar
      // kernel reference (itself checked against float math in kernels_test)
      // applies exactly that rounding.
      std::vector<float> xf(x.begin(), x.end()), yf(y.size());
      matmul_reference(w, xf.data(), 1, yf.data());
      for (size_t r = 0; r < y.size(); ++r) y[r] = yf[r] + (bias ? bias[r] : 0.0);
      return y;
    }
    for (int64_t r = 0; r < w.rows; ++r) {
      auto wr = row(w, r);
      double s = bias ? bias[r] : 0.0;
      for (int64_t c = 0; c < w.cols; ++c) s += wr[c] * x[c];
      y[r] = s;
    }
    return y;
  }
  std::vector<double> norm(const std::vector<double>& x, const float* w) const {
    double ss = 0;
    for (double e : x) ss += e * e;
    const double scale = 1.0 / std::sqrt(ss / x.size() + c_.rms_norm_epsilon);
    std::vector<double> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = x[i] * scale * w[i];
    return out;
  }
  void rope(std::vector<double>& v, int64_t pos) const {
    const int64_t hd = c_.head_dim, half = hd / 2;
    for (size_t h = 0; h < v.size() / hd; ++h) {
      for (int64_t i = 0; i < half; ++i) {
        double freq = std::pow(static_cast<double>(c_.rope_freq_base), -2.0 * i / hd);
        if (c_.rope_scaling_factor > 0) {
          const double wl = 2 * M_PI / freq;
          const double lo = c_.rope_original_context / c_.rope_low_freq_factor;
          const double hi = c_.rope_original_context / c_.rope_high_freq_factor;
          if (wl > lo) {
            freq /= c_.rope_scaling_factor;
          } else if (wl >= hi) {
            const double sm = (c_.rope_original_context / wl - c_.rope_low_freq_factor) /
                              (c_.rope_high_freq_factor - c_.rope_low_freq_factor);
            freq = (1 - sm) * freq / c_.rope_scaling_factor + sm * freq;
          }
        }
        const double a = pos * freq;
        const size_t i0 = h * hd + (c_.rope_neox ? i : 2 * i);
        const size_t i1 = h * hd + (c_.rope_neox ? i + half : 2 * i + 1);
        const double x0 = v[i0], x1 = v[i1];
        v[i0] = x0 * std::cos(a) - x1 * std::sin(a);
        v[i1] = x0 * std::sin(a) + x1 * std::cos(a);
      }
    }
  }
  const Model& m_;
  const ModelConfig& c_;
};

struct Case {
  std::string arch;
  TensorType type;
  bool tied;
  bool llama3_scaling;
};

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  return info.param.arch + "_" + tensor_type_name(static_cast<uint32_t>(info.param.type)) +
         (info.param.tied ? "_tied" : "") + (info.param.llama3_scaling ? "_llama3rope" : "");
}

class ForwardMatchesReference : public ::testing::TestWithParam<Case> {};

TEST_P(ForwardMatchesReference, LogitsAtEveryStep) {
  const Case& c = GetParam();
  SyntheticModelSpec spec;
  spec.architecture = c.arch;
  spec.matrix_type = c.type;
  spec.embedding_type = c.type;
  spec.tied_output = c.tied;
  spec.llama3_rope_scaling = c.llama3_scaling;
  const bool k_quant = tensor_type_traits(static_cast<uint32_t>(c.type))->block_size == 256;
  if (k_quant) {  // K-quant rows are 256 elements long
    spec.embedding_length = 256;
    spec.feed_forward_length = 512;
  }
  const std::string path = testing::temp_path(".gguf");
  ASSERT_TRUE(write_synthetic_model(spec, path).ok());
  auto model = Model::load(path);
  ASSERT_TRUE(model.ok()) << model.error().message;
  EXPECT_EQ((*model)->config().tied_output, c.tied);
  auto ctx = InferenceContext::create(*model, {});
  ASSERT_TRUE(ctx.ok()) << ctx.error().message;
  ThreadPool pool(2);
  ReferenceModel ref(**model);

  // Quantized paths round activations to 8 bits, so a float difference far
  // upstream can flip a rounding step, and the random network amplifies it;
  // K-quants share one activation scale per 256 values, so their steps are
  // coarser. Float paths agree to float precision.
  const double tolerance = !is_quantized(c.type) ? 2e-4 : k_quant ? 3e-2 : 5e-3;
  std::vector<TokenId> seq = {1, 40, 200, 7, 260, 99, 3};
  auto check = [&](std::span<const float> got) {
    auto want = ref.logits(seq);
    double scale = 0, worst = 0;
    for (size_t i = 0; i < want.size(); ++i) scale = std::max(scale, std::abs(want[i]));
    for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]));
    EXPECT_LE(worst, tolerance * scale + 1e-4) << "after " << seq.size() << " tokens";
  };
  auto logits = (*ctx)->evaluate(seq, pool);  // one batch: the prompt path
  ASSERT_TRUE(logits.ok());
  check(*logits);
  for (TokenId next : {5, 120, 33}) {  // then single tokens: the decode path
    seq.push_back(next);
    auto step = (*ctx)->evaluate(std::span<const TokenId>(&next, 1), pool);
    ASSERT_TRUE(step.ok());
    check(*step);
  }
  std::filesystem::remove(path);
}

INSTANTIATE_TEST_SUITE_P(AllTypes, ForwardMatchesReference,
                         ::testing::Values(Case{"llama", TensorType::kF32, false, false},
                                           Case{"llama", TensorType::kF32, true, true},
                                           Case{"llama", TensorType::kF16, false, false},
                                           Case{"llama", TensorType::kBF16, false, false},
                                           Case{"llama", TensorType::kQ8_0, false, false},
                                           Case{"llama", TensorType::kQ4_0, true, false},
                                           Case{"llama", TensorType::kQ4_K, false, false},
                                           Case{"llama", TensorType::kIQ4_NL, false, false},
                                           Case{"llama", TensorType::kIQ4_XS, true, false},
                                           Case{"llama", TensorType::kQ2_K, false, false},
                                           Case{"llama", TensorType::kQ3_K, true, false},
                                           Case{"llama", TensorType::kQ5_K, false, false},
                                           Case{"llama", TensorType::kQ6_K, false, false},
                                           Case{"llama", TensorType::kQ5_0, false, false},
                                           Case{"llama", TensorType::kQ5_1, true, false},
                                           Case{"qwen2", TensorType::kF32, true, false},
                                           Case{"qwen2", TensorType::kQ8_0, false, false},
                                           Case{"qwen2", TensorType::kQ4_K, true, false},
                                           Case{"qwen2", TensorType::kQ5_0, false, false},
                                           Case{"qwen2", TensorType::kQ5_K, true, false}),
                         case_name);

// The newer architectures against llama.cpp on the same synthetic files:
// tests/llama_cpp_reference/ holds llama.cpp's logits at each position of a
// fixed sequence and its 64 greedy tokens (bench/llama_cpp_reference.sh made
// them, and printed how far llama.cpp moves from itself when only its KV-cache
// type and batching change: 0.002-0.005 with float weights, 0.08-0.13 with
// Q8_0 and Q4_K, whose activations it rounds to 8 bits in batch-dependent
// ways). Logits are O(1) (max |logit| 3.6-5.7). Bounds on the maximum absolute
// difference: 0.005 for F32 (seen: up to 0.0015, from ggml's tabulated GELU),
// 0.01 for F16 (0.004: llama.cpp rounds activations to F16), 0.15 for Q8_0
// and Q4_K (0.093). Top-1 identical at every position, except where
// llama.cpp's own best two logits are within the bound with a type other than
// F32 (lfm2-tiny Q8_0 has one such position, 0.045 apart; llama.cpp's own runs
// differ in top-1 at up to 2 of 16 positions with quantized types). Greedy:
// F32 identical for all 64 tokens; with other types llama.cpp's own runs part
// at near-ties (after 1 token, at worst), so there a different token is
// accepted only where the best two logits are within twice the bound, and the
// comparison stops there.
struct LlamaCppCase {
  std::string preset;
  TensorType type;
  int32_t context = 128;  // phi3-tiny: 128 uses LongRoPE's short factors, 512 the long ones
};

std::string llama_cpp_case_name(const ::testing::TestParamInfo<LlamaCppCase>& info) {
  std::string name = info.param.preset + "_" +
                     tensor_type_name(static_cast<uint32_t>(info.param.type)) +
                     (info.param.context != 128 ? "_ctx" + std::to_string(info.param.context) : "");
  for (char& ch : name) {
    if (ch == '-') ch = '_';
  }
  return name;
}

struct LlamaCppReference {
  int32_t positions = 0, vocab = 0, generated = 0;
  std::vector<float> logits;
  std::vector<int32_t> tokens;
};

std::optional<LlamaCppReference> read_llama_cpp_reference(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  LlamaCppReference r;
  if (!in.read(reinterpret_cast<char*>(&r.positions), 4) ||
      !in.read(reinterpret_cast<char*>(&r.vocab), 4) ||
      !in.read(reinterpret_cast<char*>(&r.generated), 4)) {
    return std::nullopt;
  }
  r.logits.resize(static_cast<size_t>(r.positions) * static_cast<size_t>(r.vocab));
  r.tokens.resize(static_cast<size_t>(r.generated));
  if (!in.read(reinterpret_cast<char*>(r.logits.data()),
               static_cast<std::streamsize>(r.logits.size() * sizeof(float))) ||
      !in.read(reinterpret_cast<char*>(r.tokens.data()),
               static_cast<std::streamsize>(r.tokens.size() * sizeof(int32_t)))) {
    return std::nullopt;
  }
  return r;
}

TokenId argmax_of(std::span<const float> v) {
  return static_cast<TokenId>(std::max_element(v.begin(), v.end()) - v.begin());
}

// The gap between the largest and second largest value.
float top_margin(std::span<const float> v) {
  float first = -INFINITY, second = -INFINITY;
  for (float x : v) {
    if (x > first) {
      second = first;
      first = x;
    } else if (x > second) {
      second = x;
    }
  }
  return first - second;
}

class MatchesLlamaCpp : public ::testing::TestWithParam<LlamaCppCase> {};

TEST_P(MatchesLlamaCpp, LogitsAndGreedyTokens) {
  const LlamaCppCase& c = GetParam();
  const std::string type_name = tensor_type_name(static_cast<uint32_t>(c.type));
  const auto ref = read_llama_cpp_reference(
      std::string(FSH_SOURCE_DIR) + "/tests/llama_cpp_reference/" + c.preset + "-" + type_name +
      (c.context != 128 ? "-ctx" + std::to_string(c.context) : "") + ".logits");
  ASSERT_TRUE(ref.has_value()) << "reference missing or short; run bench/llama_cpp_reference.sh";
  auto spec = synthetic_model_preset(c.preset, c.type);
  ASSERT_TRUE(spec.has_value());
  const std::string path = testing::temp_path(".gguf");
  ASSERT_TRUE(write_synthetic_model(*spec, path).ok());
  auto model = Model::load(path);
  ASSERT_TRUE(model.ok()) << model.error().message;
  ASSERT_EQ((*model)->config().vocab_size, ref->vocab);
  // The context llama.cpp ran with, which picks phi3's LongRoPE factors.
  ContextOptions options;
  options.context_length = c.context;
  auto stepwise = InferenceContext::create(*model, options);
  auto batched = InferenceContext::create(*model, options);
  ASSERT_TRUE(stepwise.ok() && batched.ok());
  ThreadPool pool(2);
  const float bound = c.type == TensorType::kF32   ? 0.005f
                      : c.type == TensorType::kF16 ? 0.01f
                                                   : 0.15f;
  const std::vector<TokenId> seq = {1,   40, 200, 7,  260, 99, 3,   5,
                                    120, 33, 271, 15, 288, 64, 180, 296};
  ASSERT_EQ(static_cast<int32_t>(seq.size()), ref->positions);
  float worst = 0;
  auto compare = [&](std::span<const float> got, int32_t position) {
    const std::span<const float> want(
        ref->logits.data() + static_cast<size_t>(position) * ref->vocab,
        static_cast<size_t>(ref->vocab));
    for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::abs(got[i] - want[i]));
    if (argmax_of(got) != argmax_of(want)) {
      EXPECT_TRUE(c.type != TensorType::kF32 && top_margin(want) <= bound)
          << "top-1 at position " << position << ": " << argmax_of(got) << ", llama.cpp "
          << argmax_of(want);
    }
  };
  for (size_t i = 0; i < seq.size(); ++i) {
    auto logits = (*stepwise)->evaluate(std::span<const TokenId>(&seq[i], 1), pool);
    ASSERT_TRUE(logits.ok());
    compare(*logits, static_cast<int32_t>(i));
  }
  auto whole = (*batched)->evaluate(seq, pool);  // the prompt path: one batch
  ASSERT_TRUE(whole.ok());
  compare(*whole, ref->positions - 1);
  // Batches of 3, so sliding windows and NoPE layers span batch boundaries.
  options.max_batch = 3;
  auto split = InferenceContext::create(*model, options);
  ASSERT_TRUE(split.ok());
  auto split_logits = (*split)->evaluate(seq, pool);
  ASSERT_TRUE(split_logits.ok());
  compare(*split_logits, ref->positions - 1);
  EXPECT_LE(worst, bound) << "max abs logit difference from llama.cpp";
  std::vector<float> last(whole->begin(), whole->end());
  for (int32_t g = 0; g < ref->generated; ++g) {
    const TokenId next = argmax_of(last);
    if (next != ref->tokens[static_cast<size_t>(g)]) {
      EXPECT_TRUE(c.type != TensorType::kF32 && top_margin(last) <= 2 * bound)
          << "greedy token " << g << ": " << next << ", llama.cpp " << ref->tokens[g];
      break;  // past a near-tie the two runs follow different texts
    }
    auto step = (*batched)->evaluate(std::span<const TokenId>(&next, 1), pool);
    ASSERT_TRUE(step.ok());
    last.assign(step->begin(), step->end());
  }
  std::filesystem::remove(path);
}

INSTANTIATE_TEST_SUITE_P(TinyPresets, MatchesLlamaCpp, ::testing::ValuesIn([] {
                           std::vector<LlamaCppCase> cases;
                           for (const char* preset : {"qwen3-tiny", "smollm3-tiny", "gemma3-tiny",
                                                      "phi3-tiny", "lfm2-tiny"}) {
                             for (TensorType type : {TensorType::kF32, TensorType::kF16,
                                                     TensorType::kQ8_0, TensorType::kQ4_K}) {
                               cases.push_back({preset, type});
                             }
                           }
                           cases.push_back({"phi3-tiny", TensorType::kF32, 512});
                           cases.push_back({"phi3-tiny", TensorType::kQ4_K, 512});
                           return cases;
                         }()),
                         llama_cpp_case_name);

TEST(Model, BatchedPromptEqualsTokenByToken) {
  for (TensorType type :
       {TensorType::kF32, TensorType::kQ8_0, TensorType::kQ4_0, TensorType::kQ5_1,
        TensorType::kQ3_K, TensorType::kQ4_K, TensorType::kQ5_K, TensorType::kQ6_K}) {
    SCOPED_TRACE(tensor_type_name(static_cast<uint32_t>(type)));
    SyntheticModelSpec spec;
    spec.matrix_type = type;
    spec.embedding_length = 256;
    spec.feed_forward_length = 512;
    const std::string path = testing::temp_path(".gguf");
    ASSERT_TRUE(write_synthetic_model(spec, path).ok());
    auto model = Model::load(path);
    ASSERT_TRUE(model.ok());
    ContextOptions small_batch;
    small_batch.max_batch = 3;  // forces the prompt to be split across batches
    auto a = InferenceContext::create(*model, {});
    auto b = InferenceContext::create(*model, small_batch);
    auto c = InferenceContext::create(*model, {});
    ThreadPool pool(2);
    const std::vector<TokenId> seq = {1, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140};
    auto batched = (*a)->evaluate(seq, pool);
    ASSERT_TRUE(batched.ok());
    std::vector<float> want(batched->begin(), batched->end());
    auto split = (*b)->evaluate(seq, pool);
    std::vector<float> got_split(split->begin(), split->end());
    std::span<const float> got;
    for (TokenId t : seq) got = *(*c)->evaluate(std::span<const TokenId>(&t, 1), pool);
    float scale = 0;
    for (float w : want) scale = std::max(scale, std::abs(w));
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_NEAR(got[i], want[i], 2e-3 * scale) << "token by token, logit " << i;
      ASSERT_NEAR(got_split[i], want[i], 2e-3 * scale) << "split batches, logit " << i;
    }
    std::filesystem::remove(path);
  }
}

std::vector<float> logits_of(std::shared_ptr<const Model> model, const std::vector<TokenId>& seq) {
  auto ctx = InferenceContext::create(model, {});
  EXPECT_TRUE(ctx.ok());
  ThreadPool pool(2);
  auto logits = (*ctx)->evaluate(seq, pool);
  EXPECT_TRUE(logits.ok());
  return logits.ok() ? std::vector<float>(logits->begin(), logits->end()) : std::vector<float>();
}

// The tensor's rows converted to `type` with the kernels.
std::vector<uint8_t> converted(const GgufTensorInfo& t, TensorType type) {
  std::vector<float> values(t.element_count);
  EXPECT_TRUE(dequantize_row(static_cast<TensorType>(t.type), t.data, values.data(),
                             static_cast<int64_t>(t.element_count)));
  const size_t row_bytes =
      tensor_row_bytes(*tensor_type_traits(static_cast<uint32_t>(type)), t.dims[0]);
  std::vector<uint8_t> out(row_bytes * (t.element_count / t.dims[0]));
  for (size_t r = 0; r < t.element_count / t.dims[0]; ++r) {
    EXPECT_TRUE(quantize_row(type, values.data() + r * t.dims[0], out.data() + r * row_bytes,
                             static_cast<int64_t>(t.dims[0])));
  }
  return out;
}

// Writes `model`'s file to `path` with tensor `name` replaced by `type` and `data`.
void write_with_tensor(const Model& model, const std::string& name, TensorType type,
                       std::span<const uint8_t> data, const std::string& path) {
  GgufWriter writer;
  for (const auto& [key, value] : model.file().metadata()) writer.set(key, value);
  for (const auto& t : model.file().tensors()) {
    const bool replaced = t.name == name;
    ASSERT_TRUE(writer
                    .add_tensor(t.name, replaced ? type : static_cast<TensorType>(t.type), t.dims,
                                replaced ? data
                                         : std::span<const uint8_t>(
                                               t.data, static_cast<size_t>(t.byte_size)))
                    .ok());
  }
  ASSERT_TRUE(writer.write(path).ok());
}

// A model with one matrix swapped in memory computes exactly what the same
// model written to a file with that tensor converted computes, and leaves the
// model it came from untouched.
TEST(Model, WithMatrixEqualsTheConvertedFile) {
  for (const bool tied : {false, true}) {
    SCOPED_TRACE(tied ? "tied output" : "own output");
    SyntheticModelSpec spec;
    spec.tied_output = tied;
    const std::string path = testing::temp_path(".gguf");
    ASSERT_TRUE(write_synthetic_model(spec, path).ok());
    auto base = Model::load(path);
    ASSERT_TRUE(base.ok());
    const std::vector<TokenId> seq = {1, 50, 60, 70, 80};
    const std::vector<float> base_logits = logits_of(*base, seq);
    for (const std::string name :
         {"blk.1.attn_v.weight", "blk.0.ffn_down.weight", "token_embd.weight"}) {
      SCOPED_TRACE(name);
      const GgufTensorInfo& tensor = *(*base)->file().find_tensor(name);
      auto swapped =
          Model::with_matrix(*base, name, TensorType::kQ4_0, converted(tensor, TensorType::kQ4_0));
      ASSERT_TRUE(swapped.ok()) << swapped.error().message;

      const std::string written = testing::temp_path(".gguf");
      write_with_tensor(**base, name, TensorType::kQ4_0, converted(tensor, TensorType::kQ4_0),
                        written);
      auto from_file = Model::load(written);
      ASSERT_TRUE(from_file.ok());
      EXPECT_EQ(logits_of(*swapped, seq), logits_of(*from_file, seq));
      EXPECT_NE(logits_of(*swapped, seq), base_logits);
      EXPECT_EQ((*swapped)->weight_bytes(), (*from_file)->weight_bytes());
      std::filesystem::remove(written);
    }
    EXPECT_EQ(logits_of(*base, seq), base_logits);

    // The swapped model keeps what it shares alive.
    const GgufTensorInfo& wq = *(*base)->file().find_tensor("blk.0.attn_q.weight");
    auto swapped = Model::with_matrix(*base, "blk.0.attn_q.weight", TensorType::kQ8_0,
                                      converted(wq, TensorType::kQ8_0));
    ASSERT_TRUE(swapped.ok());
    const std::vector<float> before = logits_of(*swapped, seq);
    base = make_error(ErrorKind::kInternal, "released");
    EXPECT_EQ(logits_of(*swapped, seq), before);

    auto no_layer = Model::with_matrix(*swapped, "blk.7.attn_q.weight", TensorType::kQ8_0, {});
    ASSERT_FALSE(no_layer.ok());
    EXPECT_NE(no_layer.error().message.find("no weight matrix 'blk.7.attn_q.weight'"),
              std::string::npos)
        << no_layer.error().message;
    EXPECT_FALSE(Model::with_matrix(*swapped, "blk.0.attn_norm.weight", TensorType::kF32, {}).ok());
    auto wrong_size = Model::with_matrix(*swapped, "blk.0.attn_k.weight", TensorType::kQ8_0,
                                         std::vector<uint8_t>(10));
    ASSERT_FALSE(wrong_size.ok());
    EXPECT_NE(wrong_size.error().message.find("10 bytes"), std::string::npos);
    auto no_fit = Model::with_matrix(*swapped, "blk.0.attn_k.weight", TensorType::kQ4_K, {});
    ASSERT_FALSE(no_fit.ok());  // rows of 64 are not whole 256-element blocks
    EXPECT_NE(no_fit.error().message.find("do not split"), std::string::npos);
    std::filesystem::remove(path);
  }
}

TEST(Model, ContextOverflowIsAClearError) {
  SyntheticModelSpec spec;
  spec.context_length = 32;
  const std::string path = testing::temp_path(".gguf");
  ASSERT_TRUE(write_synthetic_model(spec, path).ok());
  auto model = Model::load(path);
  ASSERT_TRUE(model.ok());
  auto ctx = InferenceContext::create(*model, {});
  ThreadPool pool(1);
  std::vector<TokenId> seq(40, 5);
  auto r = (*ctx)->evaluate(seq, pool);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind, ErrorKind::kResourceExhausted);
  EXPECT_NE(r.error().message.find("context"), std::string::npos);
  EXPECT_EQ((*ctx)->position(), 0);  // nothing half-evaluated
  GenerationRequest req;
  req.prompt = seq;
  auto g = generate(**ctx, pool, req);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.error().kind, ErrorKind::kResourceExhausted);
  std::filesystem::remove(path);
}

// A context asked for is what one gets, beyond the trained length too, or a
// clear error when the KV budget cannot hold it; never a silent cap. An F16
// cache takes half the bytes of an F32 one.
TEST(Model, AskedContextIsHonouredOrRefused) {
  SyntheticModelSpec spec;
  spec.context_length = 64;
  const std::string path = testing::temp_path(".gguf");
  ASSERT_TRUE(write_synthetic_model(spec, path).ok());
  auto model = Model::load(path);
  ASSERT_TRUE(model.ok());
  EXPECT_EQ((*model)->kv_bytes_per_token(TensorType::kF32),
            2 * (*model)->kv_bytes_per_token(TensorType::kF16));
  ContextOptions options;
  options.context_length = 256;
  options.kv_type = TensorType::kF16;
  auto longer = InferenceContext::create(*model, options);
  ASSERT_TRUE(longer.ok()) << longer.error().message;
  EXPECT_EQ((*longer)->context_length(), 256);
  options.kv_memory_budget = (*model)->kv_bytes_per_token(TensorType::kF16) * 100;
  auto refused = InferenceContext::create(*model, options);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().kind, ErrorKind::kResourceExhausted);
  EXPECT_NE(refused.error().message.find("raise the budget or ask for a shorter context"),
            std::string::npos)
      << refused.error().message;
  options.kv_type = TensorType::kQ4_0;
  EXPECT_FALSE(InferenceContext::create(*model, options).ok());
  std::filesystem::remove(path);
}

TEST(Model, MissingTensorIsNamed) {
  engine::GgufWriter w;
  w.set("general.architecture", GgufValue::string("llama"));
  w.set("llama.embedding_length", GgufValue::u32(64));
  w.set("llama.block_count", GgufValue::u32(1));
  w.set("llama.attention.head_count", GgufValue::u32(4));
  w.set("llama.feed_forward_length", GgufValue::u32(128));
  w.set("llama.context_length", GgufValue::u32(64));
  auto vocab = synthetic_vocabulary();
  w.set("tokenizer.ggml.model", GgufValue::string("llama"));
  w.set("tokenizer.ggml.tokens", GgufValue::string_array(vocab.tokens));
  w.set("tokenizer.ggml.scores", GgufValue::f32_array(vocab.scores));
  const std::string path = testing::temp_path(".gguf");
  ASSERT_TRUE(w.write(path).ok());
  auto model = Model::load(path);
  ASSERT_FALSE(model.ok());
  EXPECT_NE(model.error().message.find("token_embd.weight"), std::string::npos)
      << model.error().message;
  std::filesystem::remove(path);
}

// A file whose matrix has a type without kernels is refused by name, with the
// types that would load.
TEST(Model, MatrixTypeWithoutKernelsIsNamed) {
  SyntheticModelSpec spec;
  spec.embedding_length = 256;  // rows that split into 256-element super blocks
  spec.feed_forward_length = 512;
  const std::string path = testing::temp_path(".gguf");
  ASSERT_TRUE(write_synthetic_model(spec, path).ok());
  auto base = Model::load(path);
  ASSERT_TRUE(base.ok());
  const GgufTensorInfo& wq = *(*base)->file().find_tensor("blk.0.attn_q.weight");
  const std::vector<uint8_t> q4_1(wq.dims[1] * wq.dims[0] / 32 * 20, 0);
  const std::string written = testing::temp_path(".gguf");
  write_with_tensor(**base, wq.name, TensorType::kQ4_1, q4_1, written);
  auto refused = Model::load(written);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().kind, ErrorKind::kUnsupported);
  const std::string& why = refused.error().message;
  EXPECT_NE(why.find("'blk.0.attn_q.weight' has type Q4_1"), std::string::npos) << why;
  EXPECT_NE(why.find(computable_type_names()), std::string::npos) << why;
  EXPECT_NE(computable_type_names().find("Q5_0, Q5_1"), std::string::npos);
  std::filesystem::remove(written);
  std::filesystem::remove(path);
}

TEST(Model, UnknownModelNameIsNotFound) {
  auto p = resolve_model_path("no-such-model-anywhere");
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().kind, ErrorKind::kNotFound);
  EXPECT_NE(p.error().message.find("FORESHORE_MODEL_PATH"), std::string::npos);
  // A folder is said to be one, not "no such file".
  const std::string dir = testing::temp_path("-models");
  std::filesystem::create_directories(dir);
  p = resolve_model_path(dir);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.error().message.find("is a folder; pass the .gguf file in it"), std::string::npos)
      << p.error().message;
  std::filesystem::remove(dir);
  // A device or FIFO exists: it is said to be one, not "not found".
  p = resolve_model_path("/dev/null");
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.error().kind, ErrorKind::kInvalidArgument);
  EXPECT_NE(p.error().message.find("'/dev/null' is a character device, not a regular file"),
            std::string::npos)
      << p.error().message;
  const std::string fifo = testing::temp_path(".gguf");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  p = resolve_model_path(fifo);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.error().message.find("is a FIFO (named pipe), not a regular file"), std::string::npos)
      << p.error().message;
  std::filesystem::remove(fifo);
}

// Contexts over one shared pool take KV blocks as their positions fill, are
// refused (nothing run, nothing taken) when the pool is short, and give
// blocks back when truncated or destroyed; a sequence over blocks computes
// exactly what it computes with a pool of its own.
TEST(KvPool, ContextsTakeBlocksAsTheyFillAndGiveThemBack) {
  SyntheticModelSpec spec;
  spec.context_length = 512;
  const std::string path = testing::temp_path(".gguf");
  ASSERT_TRUE(write_synthetic_model(spec, path).ok());
  auto model = Model::load(path);
  ASSERT_TRUE(model.ok());
  std::filesystem::remove(path);
  const auto probe = KvPool::create(**model, TensorType::kF16, 1ull << 30);
  ASSERT_TRUE(probe.ok()) << probe.error().message;
  auto pool = KvPool::create(**model, TensorType::kF16, 10 * (*probe)->block_bytes());
  ASSERT_TRUE(pool.ok());
  EXPECT_EQ((*pool)->blocks_total(), 10);
  ContextOptions shared;
  shared.kv_pool = *pool;
  auto a = InferenceContext::create(*model, shared);
  auto b = InferenceContext::create(*model, shared);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ((*a)->kv_blocks_held(), 0);
  ThreadPool threads(2);

  std::vector<TokenId> forty(40);
  for (size_t i = 0; i < forty.size(); ++i) forty[i] = static_cast<TokenId>(3 + i);
  ASSERT_TRUE((*a)->evaluate(forty, threads).ok());
  EXPECT_EQ((*a)->kv_blocks_held(), 2);  // 40 positions: two blocks of 32
  EXPECT_EQ((*pool)->blocks_used(), 2);

  // 9 blocks do not fit beside a's 2 of 10: refused before anything runs.
  std::vector<TokenId> long_seq(8 * KvPool::kBlockTokens + 1);
  for (size_t i = 0; i < long_seq.size(); ++i) long_seq[i] = static_cast<TokenId>(3 + i % 50);
  auto refused = (*b)->evaluate(long_seq, threads);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().kind, ErrorKind::kResourceExhausted);
  EXPECT_NE(refused.error().message.find("kv_memory_mb"), std::string::npos);
  EXPECT_EQ((*b)->position(), 0);
  EXPECT_EQ((*pool)->blocks_used(), 2);

  // Truncating keeps blocks for the positions to come; giving back frees them.
  (*a)->truncate(0);
  EXPECT_EQ((*pool)->blocks_used(), 2);
  (*a)->release_unused_kv();
  EXPECT_EQ((*pool)->blocks_used(), 0);
  auto over_blocks = (*b)->evaluate(long_seq, threads);
  ASSERT_TRUE(over_blocks.ok()) << over_blocks.error().message;
  EXPECT_EQ((*b)->kv_blocks_held(), 9);

  ContextOptions own;
  own.kv_type = TensorType::kF16;
  auto alone = InferenceContext::create(*model, own);
  ASSERT_TRUE(alone.ok());
  auto reference = (*alone)->evaluate(long_seq, threads);
  ASSERT_TRUE(reference.ok());
  ASSERT_EQ(reference->size(), over_blocks->size());
  for (size_t i = 0; i < reference->size(); ++i) ASSERT_EQ((*reference)[i], (*over_blocks)[i]) << i;

  // Destruction frees all; a reservation holds blocks ahead of the positions.
  EXPECT_FALSE((*a)->reserve(100).ok());  // 4 blocks, 1 free
  b->reset();
  EXPECT_EQ((*pool)->blocks_used(), 0);
  ASSERT_TRUE((*a)->reserve(100).ok());
  EXPECT_EQ((*a)->kv_blocks_held(), 4);
  EXPECT_EQ((*pool)->blocks_used(), 4);
}

// A Q8_0 KV cache (a quarter of F32's bytes) computes what an F32 one does
// within its rounding, and is refused with a clear error where heads do not
// split into blocks of 32.
TEST(KvPool, Q8_0CacheFollowsTheExactOne) {
  SyntheticModelSpec spec;
  spec.embedding_length = 128;
  spec.head_count = 2;
  spec.head_count_kv = 1;
  spec.context_length = 256;
  const std::string path = testing::temp_path(".gguf");
  ASSERT_TRUE(write_synthetic_model(spec, path).ok());
  auto model = Model::load(path);
  ASSERT_TRUE(model.ok());
  std::filesystem::remove(path);
  EXPECT_EQ((*model)->kv_bytes_per_token(TensorType::kQ8_0) * 32,
            (*model)->kv_bytes_per_token(TensorType::kF32) * 34 / 4);
  std::vector<TokenId> tokens(100);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<TokenId>(3 + (i * 7) % 60);
  ThreadPool threads(2);
  auto logits_with = [&](TensorType type) {
    ContextOptions options;
    options.kv_type = type;
    auto ctx = InferenceContext::create(*model, options);
    EXPECT_TRUE(ctx.ok()) << ctx.error().message;
    auto out = (*ctx)->evaluate(tokens, threads);
    EXPECT_TRUE(out.ok());
    return std::vector<float>(out->begin(), out->end());
  };
  const auto exact = logits_with(TensorType::kF32);
  const auto q8 = logits_with(TensorType::kQ8_0);
  float largest = 0.0f, worst = 0.0f;
  for (size_t i = 0; i < exact.size(); ++i) {
    largest = std::max(largest, std::fabs(exact[i]));
    worst = std::max(worst, std::fabs(exact[i] - q8[i]));
  }
  EXPECT_LE(worst, 0.02f * largest) << "largest logit " << largest;
  EXPECT_EQ(std::max_element(exact.begin(), exact.end()) - exact.begin(),
            std::max_element(q8.begin(), q8.end()) - q8.begin());

  SyntheticModelSpec narrow;  // head size 16
  narrow.context_length = 64;
  const std::string narrow_path = testing::temp_path(".gguf");
  ASSERT_TRUE(write_synthetic_model(narrow, narrow_path).ok());
  auto small = Model::load(narrow_path);
  ASSERT_TRUE(small.ok());
  std::filesystem::remove(narrow_path);
  ContextOptions q8_options;
  q8_options.kv_type = TensorType::kQ8_0;
  auto refused = InferenceContext::create(*small, q8_options);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.error().message.find("multiple of 32"), std::string::npos)
      << refused.error().message;
}

std::string stories_path() {
  auto p = std::filesystem::path(testing::shared_models_dir()) / "stories260K.gguf";
  return std::filesystem::exists(p) ? p.string() : "";
}

TEST(RealModel, Stories260KGreedyMatchesReferenceOutput) {
  const std::string path = stories_path();
  if (path.empty()) GTEST_SKIP() << "stories260K.gguf not in " << testing::shared_models_dir();
  std::ifstream f(std::filesystem::path(path).replace_filename("stories260K.greedy.json"));
  ASSERT_TRUE(f.good());
  const auto expected = nlohmann::json::parse(f);
  auto model = Model::load(path);
  ASSERT_TRUE(model.ok()) << model.error().message;
  for (int threads : {1, 2, 3}) {
    ContextOptions opts;
    opts.context_length = 512;
    auto ctx = InferenceContext::create(*model, opts);
    ASSERT_TRUE(ctx.ok());
    ThreadPool pool(threads);
    GenerationRequest req;
    req.prompt = {expected["start_token"].get<TokenId>()};
    req.sampling = SamplingParams::greedy();
    req.max_tokens = expected["max_steps"].get<int32_t>();
    auto r = generate(**ctx, pool, req);
    ASSERT_TRUE(r.ok()) << r.error().message;
    std::vector<TokenId> ids;
    for (const auto& t : r->tokens) ids.push_back(t.id);
    const auto want = expected["generated_token_ids"].get<std::vector<TokenId>>();
    // The reference stops at the step budget; we may stop earlier at EOS.
    ASSERT_LE(ids.size(), want.size());
    EXPECT_EQ(ids, std::vector<TokenId>(want.begin(), want.begin() + ids.size()))
        << "threads=" << threads;
    EXPECT_GE(ids.size(), 100u);
    // SentencePiece pieces carry their leading space: the continuation of BOS is " Once".
    EXPECT_EQ(r->text.substr(1), expected["text"].get<std::string>().substr(0, r->text.size() - 1));
  }
}

// Continuous batching: sequences of different prompt lengths that join a
// running batch at different steps, with prompts loaded in chunks beside
// the others' decode steps, each give the greedy tokens they give alone, and
// logprobs within 5e-3 (the 8-row kernels of Q8_0 and Q4_0 round a little
// differently, which an F16 KV cache can turn into a last-bit change).
struct BatchedRun {
  std::vector<TokenId> prompt;
  int32_t joins_at_step = 0;
};

void expect_batch_invariant(std::shared_ptr<const Model> model, const std::vector<BatchedRun>& runs,
                            int32_t max_tokens, int32_t chunk, TensorType kv_type) {
  ThreadPool pool(2);
  ContextOptions options;
  options.context_length = 256;
  options.kv_type = kv_type;
  std::vector<GenerationResult> alone;
  for (const auto& run : runs) {
    auto ctx = InferenceContext::create(model, options);
    ASSERT_TRUE(ctx.ok());
    GenerationRequest request;
    request.prompt = run.prompt;
    request.sampling = SamplingParams::greedy();
    request.max_tokens = max_tokens;
    auto r = generate(**ctx, pool, request);
    ASSERT_TRUE(r.ok()) << r.error().message;
    alone.push_back(std::move(r).value());
  }

  auto decoder = BatchDecoder::create(model, 64);
  ASSERT_TRUE(decoder.ok());
  std::vector<std::unique_ptr<InferenceContext>> contexts;
  std::vector<GenerationRequest> requests(runs.size());
  std::vector<std::unique_ptr<Generation>> generations(runs.size());
  for (size_t i = 0; i < runs.size(); ++i) {
    auto ctx = InferenceContext::create(model, options);
    ASSERT_TRUE(ctx.ok());
    contexts.push_back(std::move(ctx).value());
    requests[i].prompt = runs[i].prompt;
    requests[i].sampling = SamplingParams::greedy();
    requests[i].max_tokens = max_tokens;
  }
  for (int32_t step = 0;; ++step) {
    std::vector<BatchEntry> entries;
    std::vector<size_t> owners;
    int32_t budget = (*decoder)->max_tokens();
    bool pending = false;
    for (size_t i = 0; i < runs.size(); ++i) {
      if (!generations[i] && runs[i].joins_at_step <= step) {
        auto g = Generation::start(*contexts[i], requests[i]);
        ASSERT_TRUE(g.ok()) << g.error().message;
        generations[i] = std::move(g).value();
      }
      if (!generations[i] || !generations[i]->finished()) pending = true;
      if (!generations[i] || generations[i]->finished()) continue;
      const auto input = generations[i]->next_input(std::min(budget, chunk));
      if (input.empty()) continue;
      budget -= static_cast<int32_t>(input.size());
      entries.push_back({contexts[i].get(), input});
      owners.push_back(i);
    }
    if (!pending) break;
    if (entries.empty()) continue;
    ASSERT_TRUE((*decoder)->decode(entries, pool).ok());
    for (size_t e = 0; e < entries.size(); ++e)
      generations[owners[e]]->advance(static_cast<int32_t>(entries[e].tokens.size()));
  }
  for (size_t i = 0; i < runs.size(); ++i) {
    SCOPED_TRACE("sequence " + std::to_string(i));
    const GenerationResult& batched = generations[i]->result();
    ASSERT_EQ(batched.tokens.size(), alone[i].tokens.size());
    for (size_t t = 0; t < batched.tokens.size(); ++t) {
      ASSERT_EQ(batched.tokens[t].id, alone[i].tokens[t].id) << "token " << t;
      EXPECT_NEAR(batched.tokens[t].logprob, alone[i].tokens[t].logprob, 5e-3) << "token " << t;
    }
    EXPECT_EQ(batched.text, alone[i].text);
  }
}

// Eight sequences of different prompt lengths, joining at different steps.
std::vector<BatchedRun> staggered_runs(int32_t vocab_size) {
  std::vector<BatchedRun> runs;
  for (int32_t i = 0; i < 8; ++i) {
    BatchedRun run;
    run.prompt.push_back(1);
    for (int32_t t = 0; t < 3 + 7 * i; ++t)
      run.prompt.push_back(3 + (t * 37 + i * 11) % (vocab_size - 3));
    run.joins_at_step = (i * 5) % 17;
    runs.push_back(std::move(run));
  }
  return runs;
}

TEST(Batch, Stories260KGreedyTokensMatchAlone) {
  const std::string path = stories_path();
  if (path.empty()) GTEST_SKIP() << "stories260K.gguf not in " << testing::shared_models_dir();
  auto model = Model::load(path);
  ASSERT_TRUE(model.ok()) << model.error().message;
  for (TensorType kv_type : {TensorType::kF16, TensorType::kF32}) {
    SCOPED_TRACE(tensor_type_name(static_cast<uint32_t>(kv_type)));
    expect_batch_invariant(*model, staggered_runs((*model)->config().vocab_size), 64, 16, kv_type);
  }
}

// The float types and the K-quants give each row the same sums in a batch
// of any size, so each sequence's tokens and logprobs are exactly its own.
// (Q4_0's and Q8_0's 8-row kernels round differently from their single-row
// ones, logits within about 1e-2, so there a near-tie may break the other
// way.) Real widths, few layers, so that the test stays quick.
TEST(Batch, RealShapesGreedyTokensMatchAlone) {
  for (const char* preset : {"smollm2-135m", "gemma3-tiny", "lfm2-tiny"}) {
    SCOPED_TRACE(preset);
    // The scalar kernels take 25 times as long at real widths (100 s here,
    // minutes under the sanitizers); the batch code is the same at every
    // level, and the tiny presets still check it on the scalar kernels.
    if (cpu_level() == CpuLevel::kScalar && std::string_view(preset) == "smollm2-135m") continue;
    auto spec = synthetic_model_preset(preset, TensorType::kF16);
    ASSERT_TRUE(spec.has_value());
    spec->context_length = 256;
    spec->layer_count = std::min(spec->layer_count, 4);
    if (!spec->conv_layers.empty())
      spec->conv_layers.resize(static_cast<size_t>(spec->layer_count));
    const std::string path = testing::temp_path(".gguf");
    ASSERT_TRUE(write_synthetic_model(*spec, path).ok());
    auto model = Model::load(path);
    ASSERT_TRUE(model.ok()) << model.error().message;
    expect_batch_invariant(*model, staggered_runs((*model)->config().vocab_size), 64, 16,
                           TensorType::kF16);
    std::filesystem::remove(path);
  }
}

// LFM2's convolution reads the l_cache - 1 positions before the current one;
// its state is those rows alone (as llama.cpp keeps it), not a row per
// position of the context, so a long context costs it nothing.
TEST(Model, Lfm2ConvolutionStateIsAFewRowsWhateverTheContext) {
  auto spec = synthetic_model_preset("lfm2-tiny", TensorType::kF32);
  ASSERT_TRUE(spec.has_value());
  const std::string path = testing::temp_path(".gguf");
  ASSERT_TRUE(write_synthetic_model(*spec, path).ok());
  auto model = Model::load(path);
  ASSERT_TRUE(model.ok()) << model.error().message;
  const ModelConfig& c = (*model)->config();
  const uint64_t rows_bytes = static_cast<uint64_t>(c.conv_layer_count) *
                              (c.shortconv_l_cache - 1) * c.embedding_length * sizeof(float);
  ASSERT_GT(rows_bytes, 0u);
  for (int32_t n_ctx : {64, 4096}) {
    ContextOptions options;
    options.context_length = n_ctx;
    options.kv_memory_budget = uint64_t{64} << 20;
    auto ctx = InferenceContext::create(*model, options);
    ASSERT_TRUE(ctx.ok()) << ctx.error().message;
    EXPECT_EQ((*ctx)->conv_state_bytes(), rows_bytes) << n_ctx;
  }

  // The state cannot go back: truncating to an earlier position forgets the
  // sequence, and running it again gives the same logits, bit for bit.
  ThreadPool pool(2);
  auto ctx = InferenceContext::create(*model, {});
  ASSERT_TRUE(ctx.ok());
  const std::vector<TokenId> seq = {1, 50, 60, 70, 80, 90, 100, 110, 120, 130};
  auto first = (*ctx)->evaluate(seq, pool);
  ASSERT_TRUE(first.ok());
  const std::vector<float> want(first->begin(), first->end());
  (*ctx)->truncate(10);
  EXPECT_EQ((*ctx)->position(), 10);
  (*ctx)->truncate(5);
  EXPECT_EQ((*ctx)->position(), 0);
  EXPECT_TRUE((*ctx)->cached_tokens().empty());
  std::span<const float> again;
  for (TokenId t : seq) again = *(*ctx)->evaluate(std::span<const TokenId>(&t, 1), pool);
  ASSERT_EQ(again.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(again[i], want[i]) << "logit " << i;

  // A second turn that shares only part of the cached tokens runs from the
  // start and generates what a fresh context does.
  GenerationRequest turn;
  turn.prompt = {1, 50, 60, 70};
  turn.sampling = SamplingParams::greedy();
  turn.max_tokens = 6;
  ASSERT_TRUE(generate(**ctx, pool, turn).ok());
  turn.prompt = {1, 50, 60, 99, 98};
  auto reused = generate(**ctx, pool, turn);
  ASSERT_TRUE(reused.ok()) << reused.error().message;
  EXPECT_EQ(reused->reused_prompt_tokens, 0);
  auto fresh_ctx = InferenceContext::create(*model, {});
  ASSERT_TRUE(fresh_ctx.ok());
  auto fresh = generate(**fresh_ctx, pool, turn);
  ASSERT_TRUE(fresh.ok());
  ASSERT_EQ(reused->tokens.size(), fresh->tokens.size());
  for (size_t i = 0; i < fresh->tokens.size(); ++i) {
    EXPECT_EQ(reused->tokens[i].id, fresh->tokens[i].id) << i;
    EXPECT_EQ(reused->tokens[i].logprob, fresh->tokens[i].logprob) << i;
  }
  std::filesystem::remove(path);
}

// A context beyond the memory the process may have is an error saying what
// to lower, not an abort on std::bad_alloc (run -c 2147483647 under a limit).
TEST(Model, AContextTooLargeForMemoryIsAClearError) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "the sanitizers' allocators do not run under an address-space limit";
#else
  const std::string path = testing::temp_path(".gguf");
  ASSERT_TRUE(write_synthetic_model(SyntheticModelSpec{}, path).ok());
  auto model = Model::load(path);
  ASSERT_TRUE(model.ok());
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // The child gets 512 MiB more address space than it has; where the limit
    // is not enforced (qemu-user ignores it) there is nothing to test.
    rlimit limit{};
    ::getrlimit(RLIMIT_AS, &limit);
    size_t vm_kib = 0;
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);) {
      if (line.starts_with("VmSize:")) vm_kib = std::stoull(line.substr(7));
    }
    limit.rlim_cur = (static_cast<rlim_t>(vm_kib) << 10) + (rlim_t{512} << 20);
    if (vm_kib == 0 || ::setrlimit(RLIMIT_AS, &limit) != 0) ::_exit(77);
    void* probe = std::malloc(size_t{1} << 30);
    if (probe != nullptr) ::_exit(77);
    ContextOptions options;
    options.context_length = std::numeric_limits<int32_t>::max();
    options.kv_memory_budget = (*model)->kv_bytes_per_token(options.kv_type) *
                               static_cast<uint64_t>(options.context_length);
    auto ctx = InferenceContext::create(*model, options);
    std::string message;
    if (ctx.ok()) {
      ThreadPool pool(2);
      const TokenId one = 1;
      auto r = (*ctx)->evaluate(std::span<const TokenId>(&one, 1), pool);
      if (!r.ok()) message = r.error().message;
    } else {
      message = ctx.error().message;
    }
    const bool clear = message.find("cannot allocate memory") != std::string::npos &&
                       message.find("shorter context") != std::string::npos &&
                       message.find("2147483647") != std::string::npos;
    if (!clear) std::fprintf(stderr, "child: '%s'\n", message.c_str());
    ::_exit(clear ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  std::filesystem::remove(path);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 77) GTEST_SKIP() << "no address-space limit";
  ASSERT_TRUE(WIFEXITED(status)) << "the child died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
#endif
}

TEST(Batch, BadStepsAreRefusedWithoutRunning) {
  SyntheticModelSpec spec;
  const std::string path = testing::temp_path(".gguf");
  ASSERT_TRUE(write_synthetic_model(spec, path).ok());
  auto model = Model::load(path);
  ASSERT_TRUE(model.ok());
  auto decoder = BatchDecoder::create(*model, 4);
  ASSERT_TRUE(decoder.ok());
  auto a = InferenceContext::create(*model, {});
  ThreadPool pool(2);
  const std::vector<TokenId> five = {1, 2, 3, 4, 5};
  std::vector<BatchEntry> too_many = {{a->get(), five}};
  auto s = (*decoder)->decode(too_many, pool);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("exceeds"), std::string::npos) << s.error().message;
  const std::vector<TokenId> two = {1, 2};
  std::vector<BatchEntry> twice = {{a->get(), two}, {a->get(), two}};
  EXPECT_FALSE((*decoder)->decode(twice, pool).ok());
  EXPECT_EQ((*a)->position(), 0);
  std::filesystem::remove(path);
}

TEST(RealModel, LlamaTinyRandomF16Runs) {
  auto p = std::filesystem::path(testing::shared_models_dir()) / "llama-2-tiny-random.gguf";
  if (!std::filesystem::exists(p)) GTEST_SKIP();
  auto model = Model::load(p.string());
  ASSERT_TRUE(model.ok()) << model.error().message;
  ContextOptions opts;
  opts.context_length = 64;
  auto ctx = InferenceContext::create(*model, opts);
  ASSERT_TRUE(ctx.ok());
  ThreadPool pool(2);
  GenerationRequest req;
  req.prompt = (*model)->tokenizer().encode("Hello world", true, false);
  req.sampling = SamplingParams::greedy();
  req.max_tokens = 8;
  auto r = generate(**ctx, pool, req);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_GT(r->generated_tokens, 0);
}

// OpenAI's penalties: presence once a token has been generated, frequency
// per time. Logits {3.0, 2.4, 0} under greedy sampling tell them apart.
TEST(Sampler, PresenceAndFrequencyPenaltiesFollowWhatWasGenerated) {
  const std::vector<float> logits = {3.0f, 2.4f, 0.0f};
  const auto picks = [&](float presence, float frequency) {
    SamplingParams p = SamplingParams::greedy();
    p.presence_penalty = presence;
    p.frequency_penalty = frequency;
    Sampler sampler(p, 3);
    std::vector<TokenId> picked;
    for (int i = 0; i < 4; ++i) picked.push_back(sampler.sample(logits, {}).id);
    return picked;
  };
  EXPECT_EQ(picks(0.0f, 0.0f), (std::vector<TokenId>{0, 0, 0, 0}));
  // 3.0 - 0.4 = 2.6 still beats 2.4, however often 0 comes.
  EXPECT_EQ(picks(0.4f, 0.0f), (std::vector<TokenId>{0, 0, 0, 0}));
  // 3.0 - 0.4 n: 2.6, then 2.2 < 2.4; then 1 is penalised too (2.0 < 2.2).
  EXPECT_EQ(picks(0.0f, 0.4f), (std::vector<TokenId>{0, 0, 1, 0}));
  // Negative values encourage repeats.
  EXPECT_EQ(picks(-1.0f, 0.0f), (std::vector<TokenId>{0, 0, 0, 0}));
  // The reported log-probability is the model's own, before penalties.
  SamplingParams p = SamplingParams::greedy();
  p.presence_penalty = 2.0f;
  Sampler sampler(p, 3);
  const SampledToken first = sampler.sample(logits, {});
  const SampledToken second = sampler.sample(logits, {});
  EXPECT_EQ(second.id, 1);
  EXPECT_FLOAT_EQ(second.logprob - first.logprob, 2.4f - 3.0f);
}

// Only tokens the filter accepts are picked; none accepted gives -1.
TEST(Sampler, FilterKeepsToAllowedTokens) {
  std::vector<float> logits(100);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = static_cast<float>(i % 7);
  for (float temperature : {0.0f, 1.0f}) {
    SamplingParams p;
    p.temperature = temperature;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    Sampler sampler(p, 100);
    // Allowed: multiples of 10 (never the largest logits, which fall on 6 mod 7
    // only for 20 and 90): rejection must get past many refusals.
    const auto tens = [](TokenId id) { return id % 10 == 0; };
    for (int i = 0; i < 50; ++i) EXPECT_EQ(sampler.sample(logits, {}, tens).id % 10, 0);
    EXPECT_EQ(sampler.sample(logits, {}, [](TokenId) { return false; }).id, -1);
  }
}

// JSON mode's recognizer, against complete objects, their prefixes, and
// what must be refused.
TEST(JsonObjectPrefix, AcceptsObjectsAndTheirPrefixesOnly) {
  const std::vector<std::string> valid = {
      R"({})",
      R"({"a":1})",
      R"({ "a" : [1, -2.5e+3, 0, 0.25E-1, true, false, null, "x\"y\u00e9\n"], "b": {"c": {}} })",
      "{\"k\":\n   \"v\"}",
      R"({"":[[],[{}]]})",
      R"({"big":-1234567890123456.5e-99,"small":9E99})",
      R"({"pair":"\ud83d\ude00\u00e9\uFFFF"})",
      "{\"utf8\":\"caf\xc3\xa9\"}",
  };
  for (const auto& text : valid) {
    JsonObjectPrefix whole;
    EXPECT_TRUE(whole.feed(text)) << text;
    EXPECT_TRUE(whole.complete()) << text;
    ASSERT_TRUE(nlohmann::json::accept(text)) << text;
    JsonObjectPrefix bytes;
    for (size_t i = 0; i < text.size(); ++i) {
      ASSERT_TRUE(bytes.feed(text.substr(i, 1))) << text << " at " << i;
      EXPECT_EQ(bytes.complete(), i + 1 == text.size()) << text << " at " << i;
    }
    // Nothing may follow the object.
    EXPECT_FALSE(JsonObjectPrefix(whole).feed(" "));
    EXPECT_FALSE(JsonObjectPrefix(whole).feed("{"));
  }
  const std::vector<std::string> invalid = {
      " {}",    // the object starts at once
      "[]",     // an object, not an array
      "{a:1}",  // keys are strings
      "{\"a\" 1}",
      R"({"a":01})",
      R"({"a":1.})",
      R"({"a":-})",
      R"({"a":1e})",
      R"({"a":tru})"
      "e1",
      R"({"a":nul,)",
      R"({"a":"\x"})",
      R"({"a":"\u12g4"})",
      R"({"a":1,})",
      R"({"a":[1,]})",
      R"({"a":[1}})",
      R"({"a":{]})",
      "{\"a\":\"\x01\"}",
      "{\"a\":\"\x80\"}",
      "{\"a\":\"\xc3\"}",
      "{\"a\":\"\xe0\x80\x80\"}",  // bad UTF-8
      "{\"a\":\"\xed\xa0\x80\"}",
      "{\"a\":\"\xf4\x90\x80\x80\"}",
      "{\"a\":\"\xc0\xaf\"}",
      R"({"a":1e100})",
      R"({"a":12345678901234567})",  // past what a double holds
      R"({"a":"\ud800"})",
      R"({"a":"\udc00"})",
      R"({"a":"\ud800\n"})",  // unpaired surrogates
      "{\n\n\"a\":1}",        // two line breaks in one run of whitespace
      "{" + std::string(21, ' ') + "}",
  };
  for (const auto& text : invalid) {
    JsonObjectPrefix p;
    EXPECT_FALSE(p.feed(text) && p.complete()) << text;
  }
  // Nesting is bounded.
  JsonObjectPrefix deep;
  EXPECT_TRUE(deep.feed("{\"a\":" + std::string(62, '[')));
  EXPECT_TRUE(JsonObjectPrefix(deep).feed("["));
  EXPECT_FALSE(JsonObjectPrefix(deep).feed("[["));
}

// Where nlohmann's parser stops on `text`: past the end for a prefix of
// valid JSON (it ran out of input), inside it for invalid JSON.
bool is_json_prefix(const std::string& text) {
  const auto error = json_syntax_error(text);
  return !error || error->byte > text.size();
}

// A story model asked for JSON writes JSON: every answer is an object or,
// cut short by max_tokens, the start of one; answers that stop are whole.
TEST(RealModel, JsonModeOutputIsAnObjectOrItsStart) {
  const std::string path = stories_path();
  if (path.empty()) GTEST_SKIP() << "stories260K.gguf not in " << testing::shared_models_dir();
  auto model = Model::load(path);
  ASSERT_TRUE(model.ok()) << model.error().message;
  ContextOptions opts;
  opts.context_length = 2048;
  auto ctx = InferenceContext::create(*model, opts);
  ASSERT_TRUE(ctx.ok());
  ThreadPool pool(2);
  int closed = 0;
  for (uint64_t seed = 1; seed <= 12; ++seed) {
    GenerationRequest req;
    req.prompt = (*model)->tokenizer().encode("Give me JSON", true, false);
    // Penalties and a high temperature push a story model toward the
    // tokens that close strings and objects.
    req.sampling.temperature = 2.0f;
    req.sampling.top_k = 0;
    req.sampling.top_p = 1.0f;
    req.sampling.min_p = 0.0f;
    req.sampling.presence_penalty = 2.0f;
    req.sampling.frequency_penalty = 2.0f;
    req.sampling.seed = seed;
    req.max_tokens = 1500;
    req.json_object = true;
    auto r = generate(**ctx, pool, req);
    ASSERT_TRUE(r.ok()) << r.error().message;
    ASSERT_FALSE(r->text.empty());
    EXPECT_EQ(r->text[0], '{') << r->text;
    EXPECT_TRUE(is_json_prefix(r->text)) << "seed " << seed << ": " << r->text;
    if (r->finish_reason == FinishReason::kStop) {
      ++closed;
      const auto parsed = nlohmann::json::parse(r->text, nullptr, false);
      EXPECT_TRUE(parsed.is_object()) << "seed " << seed << ": " << r->text;
    } else {
      EXPECT_EQ(r->generated_tokens, 1500);
    }
  }
  // About two in three close within 1500 tokens.
  EXPECT_GT(closed, 0);
}

// Template excerpts with each family's distinctive markers, as their GGUF
// files carry them.
TEST(ChatTemplate, DetectsTheNewerFamilies) {
  EXPECT_EQ(detect_chat_format("{%- if enable_thinking is defined and enable_thinking is false "
                               "%}{{- '<think>\n\n</think>\n\n' }}{%- endif %}<|im_start|>"),
            ChatFormat::kQwen3);
  EXPECT_EQ(detect_chat_format("{{- '<|im_start|>system\n' + '## Metadata\n\n' + "
                               "'Reasoning Mode: ' + reasoning_mode }}<think>"),
            ChatFormat::kSmolLM3);
  EXPECT_EQ(detect_chat_format("{{ '<|im_start|>' + message['role'] }}"), ChatFormat::kChatML);
  EXPECT_EQ(detect_chat_format("{{ bos_token }}{{ '<start_of_turn>' + role + '\n' }}"),
            ChatFormat::kGemma);
  EXPECT_EQ(detect_chat_format("{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
                               "{{ '<|assistant|>\n' }}"),
            ChatFormat::kPhi3);
  EXPECT_EQ(detect_chat_format("{{ '<|user|>\n' + message['content'] + eos_token }}"
                               "{{ '<|assistant|>' }}"),
            ChatFormat::kZephyr);
  for (const char* name : {"qwen3", "gemma", "phi3", "smollm3"}) {
    ASSERT_TRUE(parse_chat_format(name).has_value()) << name;
    EXPECT_EQ(chat_format_name(*parse_chat_format(name)), name);
  }
  EXPECT_NE(chat_format_names().find("smollm3"), std::string::npos);
}

TEST(ChatTemplate, Qwen3ThinkingAndHistory) {
  const std::vector<ChatMessage> chat = {{"system", "Be brief."},
                                         {"user", "2+2?"},
                                         {"assistant", "<think>\nadd them\n</think>\n\n4"},
                                         {"user", "And 3+3? /no_think"}};
  const std::string history =
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
      "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nAnd 3+3? /no_think<|im_end|>\n"
      "<|im_start|>assistant\n";
  EXPECT_EQ(render_chat(ChatFormat::kQwen3, chat), history);
  EXPECT_EQ(render_chat(ChatFormat::kQwen3, chat, true, false),
            history + "<think>\n\n</think>\n\n");
  EXPECT_EQ(render_chat(ChatFormat::kSmolLM3, chat, true, false),
            history + "<think>\n\n</think>\n");
  // Plain ChatML keeps assistant turns whole and ignores enable_thinking.
  EXPECT_EQ(render_chat(ChatFormat::kChatML, {{"assistant", "<think>x</think>y"}}, true, false),
            "<|im_start|>assistant\n<think>x</think>y<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, GemmaFoldsTheSystemPromptIntoTheFirstUserTurn) {
  EXPECT_EQ(
      render_chat(
          ChatFormat::kGemma,
          {{"system", " Be brief. "}, {"user", "Hi"}, {"assistant", "Hello!\n"}, {"user", "Bye"}}),
      "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
      "<start_of_turn>model\nHello!<end_of_turn>\n"
      "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n");
}

TEST(ChatTemplate, PhiEndsEveryTurn) {
  EXPECT_EQ(render_chat(ChatFormat::kPhi3, {{"system", "S"}, {"user", "U"}}),
            "<|system|>\nS<|end|>\n<|user|>\nU<|end|>\n<|assistant|>\n");
  EXPECT_EQ(render_chat(ChatFormat::kPhi3, {{"user", "U"}}, false), "<|user|>\nU<|end|>\n");
}

TEST(Reasoning, SplitsALeadingThinkBlockFromTheAnswer) {
  auto r = split_reasoning("<think>\nFirst add.\n2+2 is 4.\n</think>\n\nIt is 4.");
  EXPECT_EQ(r.reasoning, "First add.\n2+2 is 4.");
  EXPECT_EQ(r.content, "It is 4.");
  r = split_reasoning("<think>\n\n</think>\n\nDirect.");  // enable_thinking=false
  EXPECT_EQ(r.reasoning, "");
  EXPECT_EQ(r.content, "Direct.");
  r = split_reasoning("  An answer that mentions <think> later.");
  EXPECT_EQ(r.reasoning, "");
  EXPECT_EQ(r.content, "  An answer that mentions <think> later.");
  r = split_reasoning("<think>cut off mid-thought ");
  EXPECT_EQ(r.reasoning, "cut off mid-thought");
  EXPECT_EQ(r.content, "");
  EXPECT_EQ(split_reasoning("<thi").content, "<thi");
}

// Streaming in pieces of every size gives what the whole reply gives, and
// holds back no more than a possible tag or the whitespace ending a part.
TEST(Reasoning, StreamedDeltasAddUpToTheWholeSplit) {
  for (const std::string reply :
       {"<think>\nstep one\n\nstep two\n</think>\n\nThe answer.\n", "\n<think>a</think>b",
        "plain <think> text", "<think>x < y </thin k></think>z", "<th"}) {
    const ReasoningSplit whole = split_reasoning(reply);
    for (size_t size = 1; size <= reply.size(); ++size) {
      ReasoningStream stream;
      ReasoningSplit joined;
      for (size_t at = 0; at < reply.size(); at += size) {
        const ReasoningSplit delta = stream.push(std::string_view(reply).substr(at, size));
        joined.reasoning += delta.reasoning;
        joined.content += delta.content;
      }
      const ReasoningSplit last = stream.finish();
      joined.reasoning += last.reasoning;
      joined.content += last.content;
      EXPECT_EQ(joined.reasoning, whole.reasoning) << reply << " in pieces of " << size;
      EXPECT_EQ(joined.content, whole.content) << reply << " in pieces of " << size;
    }
  }
  ReasoningStream stream;
  EXPECT_EQ(stream.push("<think>abc").reasoning, "abc");
  EXPECT_EQ(stream.push(" def</th").reasoning, " def");
  EXPECT_EQ(stream.push("ink> Ans").content, "Ans");
}

TEST(Reasoning, FirstAnswerPieceSkipsTheThinkBlock) {
  using Pieces = std::vector<std::string>;
  EXPECT_EQ(first_answer_piece(Pieces{"<th", "ink>", "hm", "</", "think>", "\n\n", "4", "."}), 6u);
  EXPECT_EQ(first_answer_piece(Pieces{"\n", "<think>", "\n\n", "</think>", "Yes"}), 4u);
  EXPECT_EQ(first_answer_piece(Pieces{"Yes", "<think>"}), 0u);
  EXPECT_EQ(first_answer_piece(Pieces{"<", "b>"}), 0u);
  EXPECT_EQ(first_answer_piece(Pieces{"<think>", "still thinking"}), 2u);
  EXPECT_EQ(first_answer_piece(Pieces{" ", "\n"}), 0u);
  EXPECT_EQ(first_answer_piece(Pieces{}), 0u);
}

// An unsupported architecture names the supported ones.
TEST(Model, UnsupportedArchitectureNamesTheSupportedOnes) {
  SyntheticModelSpec spec;
  const std::string path = testing::temp_path(".gguf");
  ASSERT_TRUE(write_synthetic_model(spec, path).ok());
  auto file = GgufFile::open(path);
  ASSERT_TRUE(file.ok());
  const std::string renamed =
      testing::copy_gguf_with(**file, {{"general.architecture", GgufValue::string("mamba")}});
  ASSERT_FALSE(renamed.empty());
  auto model = Model::load(renamed);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.error().kind, ErrorKind::kUnsupported);
  for (const char* arch : {"'mamba'", "qwen3", "smollm3", "gemma3", "phi3", "lfm2"}) {
    EXPECT_NE(model.error().message.find(arch), std::string::npos) << model.error().message;
  }
  std::filesystem::remove(path);
  std::filesystem::remove(renamed);
}

// A NaN, zero or negative norm epsilon would make every norm NaN and the
// model generate nothing; it is refused at load, naming the key.
TEST(Model, ImplausibleNormEpsilonIsRefusedByName) {
  SyntheticModelSpec spec;
  const std::string path = testing::temp_path(".gguf");
  ASSERT_TRUE(write_synthetic_model(spec, path).ok());
  auto file = GgufFile::open(path);
  ASSERT_TRUE(file.ok());
  for (float epsilon : {std::numeric_limits<float>::quiet_NaN(), 0.0f, -1e-5f, 2.0f}) {
    SCOPED_TRACE(epsilon);
    const std::string edited = testing::copy_gguf_with(
        **file, {{"llama.attention.layer_norm_rms_epsilon", GgufValue::f32(epsilon)}});
    ASSERT_FALSE(edited.empty());
    auto model = Model::load(edited);
    ASSERT_FALSE(model.ok());
    EXPECT_EQ(model.error().kind, ErrorKind::kCorrupt);
    EXPECT_NE(model.error().message.find("llama.attention.layer_norm_rms_epsilon is"),
              std::string::npos)
        << model.error().message;
    std::filesystem::remove(edited);
  }
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace foreshore::engine
