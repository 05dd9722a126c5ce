// Llama-family decoder models loaded from GGUF (architectures `llama`, `qwen2`,
// `qwen3`, `smollm3`, `gemma3`, `phi3`, laid out as llama.cpp's converters
// write them), and the inference context that runs them with a KV cache.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "engine/gguf.h"
#include "engine/kernels.h"
#include "engine/kv_pool.h"
#include "engine/thread_pool.h"
#include "engine/tokenizer.h"

namespace foreshore::engine {

struct ModelConfig {
  std::string architecture;  // one of supported_architectures()
  std::string name;          // general.name, or the file stem
  int32_t vocab_size = 0;
  int32_t embedding_length = 0;
  int32_t layer_count = 0;
  int32_t head_count = 0;
  int32_t head_count_kv = 0;
  int32_t head_dim = 0;
  int32_t feed_forward_length = 0;
  int32_t context_length = 0;  // trained context
  float rms_norm_epsilon = 1e-5f;
  float rope_freq_base = 10000.0f;
  bool rope_neox = false;  // rotate halves (qwen2) instead of adjacent pairs (llama)
  int32_t rope_dim = 0;    // leading dimensions of each head that RoPE rotates (phi3: fewer)
  // RoPE base of sliding-window layers (gemma3's local layers).
  float rope_freq_base_local = 10000.0f;
  // Linear position scaling of full-attention layers (rope.scaling.type
  // "linear"); 1 means none.
  float rope_linear_scale = 1.0f;
  // LongRoPE (phi3): rotated components are multiplied by this (the file's
  // rope.scaling.attn_factor), as llama.cpp does.
  float rope_attn_factor = 1.0f;
  // Llama 3 frequency scaling; factor 0 means none.
  float rope_scaling_factor = 0.0f;
  float rope_low_freq_factor = 1.0f;
  float rope_high_freq_factor = 4.0f;
  int32_t rope_original_context = 8192;
  bool tied_output = false;          // output projection reuses token_embd
  bool attention_bias = false;       // qwen2 has q/k/v biases
  bool qk_norm = false;              // qwen3, gemma3: RMSNorm of each q and k head before RoPE
  bool post_norms = false;           // gemma3: RMSNorm of the attention and FFN outputs too
  bool gelu_ffn = false;             // gemma3: GELU (tanh) gate instead of SiLU
  float embedding_scale = 1.0f;      // gemma3: sqrt(embedding_length)
  float attention_scale = 0.0f;      // multiplies q.k: 1/sqrt(head_dim), Gemma 3 27B aside
  int32_t sliding_window = 0;        // 0: none; else keys older than this many positions are masked
  float final_logit_softcap = 0.0f;  // 0: none; else logits = cap * tanh(logits / cap)
  // lfm2: positions a short-convolution layer sees (its kernel length), and
  // how many layers are short convolutions instead of attention.
  int32_t shortconv_l_cache = 0;
  int32_t conv_layer_count = 0;
};

// The architectures Model::load accepts, for error messages.
const char* supported_architectures();

struct LayerWeights {
  const float* attn_norm = nullptr;
  WeightMatrix wq, wk, wv, wo;
  const float* bq = nullptr;
  const float* bk = nullptr;
  const float* bv = nullptr;
  const float* q_norm = nullptr;  // head_dim weights, shared by every head (qk_norm)
  const float* k_norm = nullptr;
  const float* attn_post_norm = nullptr;  // post_norms
  const float* ffn_norm = nullptr;
  WeightMatrix w_gate, w_up, w_down;
  const float* ffn_post_norm = nullptr;  // post_norms
  bool rope = true;                      // false: a NoPE layer (smollm3's every fourth)
  bool sliding = false;                  // attends only to the last config.sliding_window positions
  // lfm2 short-convolution layer (no attention weights): its ordinal among
  // such layers, or -1; in_proj (3 x embedding rows: B, C, x), the depthwise
  // kernel (embedding_length rows of shortconv_l_cache), out_proj.
  int32_t conv_index = -1;
  WeightMatrix conv_in, conv_out;
  const float* conv_kernel = nullptr;
};

// Immutable once loaded; shared by every context that runs it.
class Model {
 public:
  // Loads and validates a GGUF model: architecture, hyperparameters, every
  // tensor's presence, type and shape. Errors say which key or tensor is wrong.
  static Result<std::shared_ptr<const Model>> load(const std::string& path);
  // Same from an already-parsed file.
  static Result<std::shared_ptr<const Model>> from_gguf(std::shared_ptr<GgufFile> file);

  // `base` with one weight matrix (by tensor name, e.g. "blk.3.attn_v.weight")
  // replaced by `data` in `type`, same shape, sharing everything else with
  // it: the cheap way to see what converting one tensor does. Fails for a name
  // that is no weight matrix, a type without kernels, rows that do not split
  // into its blocks, or data of the wrong size. file() stays base's file.
  static Result<std::shared_ptr<const Model>> with_matrix(std::shared_ptr<const Model> base,
                                                          std::string_view tensor_name,
                                                          TensorType type,
                                                          std::vector<uint8_t> data);

  const ModelConfig& config() const { return config_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const GgufFile& file() const { return *file_; }
  // A short identity of the weights (name + size + type), for version pinning.
  const std::string& version() const { return version_; }
  // Bytes of weights read per generated token (every matrix once).
  uint64_t weight_bytes() const { return weight_bytes_; }
  // Bytes of KV cache per token of context, keys and values stored as
  // `kv_type` (F16 or F32).
  uint64_t kv_bytes_per_token(TensorType kv_type = TensorType::kF32) const;

  const WeightMatrix& token_embedding() const { return token_embd_; }
  const WeightMatrix& output() const { return output_; }
  const float* output_norm() const { return output_norm_; }
  const std::vector<LayerWeights>& layers() const { return layers_; }
  // RoPE frequency divisors (rope_dim / 2 each) or nullptr: rope_freqs
  // (Llama 3) and LongRoPE's short and long sets.
  const float* rope_factors() const { return rope_factors_; }
  const float* rope_factors_short() const { return rope_factors_short_; }
  const float* rope_factors_long() const { return rope_factors_long_; }

 private:
  Model() = default;
  std::shared_ptr<GgufFile> file_;
  std::shared_ptr<const Tokenizer> tokenizer_;
  ModelConfig config_;
  std::string version_;
  uint64_t weight_bytes_ = 0;
  WeightMatrix token_embd_;
  WeightMatrix output_;
  const float* output_norm_ = nullptr;
  std::vector<LayerWeights> layers_;
  const float* rope_factors_ = nullptr;
  const float* rope_factors_short_ = nullptr;
  const float* rope_factors_long_ = nullptr;
  // Norms and biases stored as F16/BF16 are widened to float once at load.
  std::vector<std::vector<float>> widened_;
  // Weight matrices repacked at load for the running level's prompt kernels
  // (WeightMatrix::interleaved; interleave_weights says which).
  std::vector<std::unique_ptr<uint8_t[]>> interleaved_;
  // For with_matrix: the model whose weights (and widened vectors) this one
  // points into, and the replacement matrix's bytes.
  std::shared_ptr<const Model> base_;
  std::vector<uint8_t> replacement_;
  friend struct ModelLoader;
};

struct ContextOptions {
  // 0: the model's trained context, capped by kv_memory_budget. Else exactly
  // this, beyond the trained context too (quality may fall there: callers
  // say so), or an error when the budget cannot hold it.
  int32_t context_length = 0;
  uint64_t kv_memory_budget = 512ull << 20;  // bytes for the KV cache
  int32_t max_batch = 64;                    // tokens per forward step when processing a prompt
  // How keys and values are stored: F32, exact, for tools that compare
  // against a reference; F16, half the memory and memory traffic (as
  // llama.cpp's default), which the edge tier, `run` and `bench` use; or
  // Q8_0, about a quarter (as llama.cpp's -ctk/-ctv q8_0), where the head
  // size is a multiple of 32.
  TensorType kv_type = TensorType::kF32;
  // Where the KV cache takes its memory: a pool several contexts share (the
  // edge tier's, with one budget for all its sequences), whose kv_type then
  // applies and kv_memory_budget is not used; or, when null, a pool of the
  // context's own that holds its whole context. Either way blocks are taken
  // as positions fill, so a short sequence holds little memory.
  std::shared_ptr<KvPool> kv_pool;
};

// Looks inside the forward pass, for calibration and pruning: while set on a
// context, evaluate() calls it for every batch of tokens and every layer.
// Spans hold the batch's n tokens row-major and are valid only during the call.
class ForwardObserver {
 public:
  virtual ~ForwardObserver() = default;
  // The residual stream before and after layer `layer` (n x embedding_length).
  virtual void on_block(int32_t layer, std::span<const float> input, std::span<const float> output,
                        int32_t n) = 0;
  // act(gate) * up inside layer `layer`'s FFN (n x feed_forward_length);
  // act is SiLU, or GELU for gemma3.
  virtual void on_ffn_activation(int32_t layer, std::span<const float> activation, int32_t n) = 0;

  // Which weight matrices multiply an observed input.
  enum class MatrixInput {
    kAttentionQkv,     // attn_q, attn_k, attn_v: the normed residual stream
    kAttentionOutput,  // attn_output: the heads' concatenated outputs
    kFfnGateUp,        // ffn_gate, ffn_up: the normed residual stream
    kFfnDown,          // ffn_down: silu(gate) * up
    kOutput,           // the output projection (layer -1)
  };
  // The input of layer `layer`'s matrices of `kind`, n rows of input.size()/n.
  // The output projection runs only for the positions whose logits are kept
  // (the last of each evaluate() call), so it shows only those.
  virtual void on_matrix_input(int32_t layer, MatrixInput kind, std::span<const float> input,
                               int32_t n) = 0;
};

// Working memory of one forward pass over up to `max_tokens` tokens; sized
// once so that steps allocate nothing. Internal to the engine.
struct ForwardScratch {
  int32_t max_tokens = 0;
  std::vector<float> x, xn, q, k, v, attn_out, gate, up, scores, logits;
  std::vector<float> conv_bcx, conv_y;  // lfm2: in_proj output, gated convolution
  std::vector<uint8_t> quant;
  std::vector<float> observed_input;  // the residual stream entering a layer, when observed
  // Per token of the pass: which entry it belongs to and its position there.
  std::vector<int32_t> token_entry, token_position;
};

class InferenceContext;

// One sequence's share of a batched forward step: `tokens` run at positions
// [context->position(), +tokens.size()) against that context's own KV cache.
struct BatchEntry {
  InferenceContext* context = nullptr;
  std::span<const TokenId> tokens;
};

// One sequence being generated: KV cache plus scratch buffers, all allocated
// at creation so that decoding allocates nothing per token. Not thread-safe;
// use one per concurrent request, or step several together with BatchDecoder.
class InferenceContext {
 public:
  static Result<std::unique_ptr<InferenceContext>> create(std::shared_ptr<const Model> model,
                                                          ContextOptions options);
  ~InferenceContext();

  // Runs `tokens` at positions [position(), position()+n) and returns the
  // logits for the last one (vocab_size floats, valid until the next call).
  // Fails with kResourceExhausted when the context would overflow.
  Result<std::span<const float>> evaluate(std::span<const TokenId> tokens, ThreadPool& pool);

  int32_t position() const { return position_; }
  int32_t context_length() const { return context_length_; }
  // Forgets everything after `position` (prefix reuse: keep a shared prompt
  // prefix). The KV blocks stay held for the positions to come. A model with
  // short-convolution state (lfm2) keeps only its latest position: going back
  // forgets everything, so read position() afterwards for what was kept.
  void truncate(int32_t position);
  // Holds KV blocks for the first `positions` positions, so that running up
  // to there cannot fail for want of memory; kResourceExhausted, and nothing
  // taken, when the pool has too few free blocks.
  Status reserve(int32_t positions);
  // Gives back the KV blocks that hold no cached position (truncate(0)
  // first to give back all).
  void release_unused_kv();
  // KV blocks held and what they hold at most.
  int64_t kv_blocks_held() const { return static_cast<int64_t>(kv_blocks_.size()); }
  const KvPool& kv_pool() const { return *kv_pool_; }
  // Bytes of lfm2's short-convolution state (0 for other models): a few rows
  // per convolution layer, whatever the context length.
  uint64_t conv_state_bytes() const { return conv_state_.size() * sizeof(float); }
  // Tokens currently in the cache, for prefix matching.
  const std::vector<TokenId>& cached_tokens() const { return cached_tokens_; }
  // The logits after the last token run on this context (by evaluate() or a
  // BatchDecoder step); empty before any.
  std::span<const float> logits() const { return {logits_.data(), logits_size_}; }
  const Model& model() const { return *model_; }
  // nullptr (the default) turns observation off; the observer must outlive its use.
  // Batched steps observe only when they hold this context alone.
  void set_observer(ForwardObserver* observer) { observer_ = observer; }

  // Checks that `tokens` fit after position() and lie in the vocabulary; the
  // error says which limit and what to do.
  Status check_input(std::span<const TokenId> tokens) const;

 private:
  friend struct ForwardPass;
  InferenceContext() = default;
  // create() after its checks: allocates (and may throw std::bad_alloc, which
  // create() turns into an error).
  static Result<std::unique_ptr<InferenceContext>> create_sized(std::shared_ptr<const Model> model,
                                                                ContextOptions& options,
                                                                int64_t n_ctx);

  std::shared_ptr<const Model> model_;
  int32_t context_length_ = 0;
  int32_t position_ = 0;
  std::vector<TokenId> cached_tokens_;
  TensorType kv_type_ = TensorType::kF32;
  size_t kv_row_bytes_ = 0;  // one position of one layer: kv_head * head_dim values
  std::shared_ptr<KvPool> kv_pool_;
  // Block i holds positions [i, i+1) x KvPool::kBlockTokens: keys, then
  // values, each [layer][position in block][kv_head * head_dim] as kv_type_.
  std::vector<uint8_t*> kv_blocks_;
  // lfm2: B*x of each short-convolution layer at the last l_cache - 1
  // positions, [conv layer][position % (l_cache - 1)][embedding_length]: all
  // the convolution reads, as llama.cpp keeps it, instead of one row per
  // position of the context (n_ctx x d floats per layer, more than the KV
  // cache itself, and outside its budget). Earlier rows are gone, which is
  // why truncate() to an earlier position forgets the whole sequence here.
  std::vector<float> conv_state_;
  std::vector<float> logits_;
  size_t logits_size_ = 0;
  std::vector<float> rope_inv_freq_;        // full-attention layers
  std::vector<float> rope_inv_freq_local_;  // sliding-window layers
  ForwardScratch scratch_;                  // for evaluate()
  ForwardObserver* observer_ = nullptr;
};

// Continuous batching: runs one forward step over tokens of several
// sequences at once. The weight matrices are read once for all of them (decode
// on a CPU is bound by reading weights, so N sequences cost little more than
// one); attention runs per token against its own sequence's KV cache. Each
// sequence's tokens give the same results as evaluate() on it alone, up to
// the rounding of the matrix kernels' grouped rows. Not thread-safe.
class BatchDecoder {
 public:
  // max_tokens: the most tokens one step may hold, all entries together.
  static Result<std::unique_ptr<BatchDecoder>> create(std::shared_ptr<const Model> model,
                                                      int32_t max_tokens);

  int32_t max_tokens() const { return scratch_.max_tokens; }

  // Runs every entry's tokens in one step; afterwards each entry's
  // context->logits() holds the logits after its last token. Checks
  // everything first and runs nothing on an error: more than max_tokens in
  // all, an empty entry, a context of another model or listed twice, a
  // context overflow, a token outside the vocabulary.
  Status decode(std::span<const BatchEntry> entries, ThreadPool& pool);

 private:
  BatchDecoder() = default;
  std::shared_ptr<const Model> model_;
  ForwardScratch scratch_;
};

}  // namespace foreshore::engine
