// Random-weight GGUF models written with the project's own GgufWriter: tiny
// ones for tests, and ones with real models' shapes for benchmarks (speed does
// not depend on weight values).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "engine/gguf.h"
#include "engine/tensor_type.h"
#include "engine/tokenizer.h"

namespace foreshore::engine {

struct SyntheticModelSpec {
  // llama, qwen2, qwen3, smollm3, gemma3, phi3 or lfm2, with the tensors llama.cpp's
  // converters write for it (phi3: fused attn_qkv and gate/up).
  std::string architecture = "llama";
  TensorType matrix_type = TensorType::kF32;
  TensorType embedding_type = TensorType::kF32;
  int32_t embedding_length = 64;
  int32_t layer_count = 2;
  int32_t head_count = 4;
  int32_t head_count_kv = 2;
  int32_t head_dim = 0;  // 0: embedding_length / head_count
  int32_t feed_forward_length = 128;
  int32_t context_length = 128;
  bool tied_output = false;
  bool llama3_rope_scaling = false;
  float rope_freq_base = 10000.0f;
  int32_t rope_dim = 0;  // 0: the whole head; phi3 rotates fewer
  // gemma3: sliding window on all layers but every sliding_window_pattern-th,
  // whose RoPE base is rope_freq_base (the local ones use rope_freq_base_local).
  int32_t sliding_window = 0;
  int32_t sliding_window_pattern = 6;
  float rope_freq_base_local = 10000.0f;
  // phi3 LongRoPE: short/long factor tensors, used beyond this trained context.
  int32_t longrope_original_context = 0;  // 0: no LongRoPE
  float longrope_attn_factor = 1.0f;
  // lfm2: which layers are short convolutions (the others attention), and
  // the convolution's length.
  std::vector<bool> conv_layers;
  int32_t shortconv_l_cache = 3;
  int32_t vocab_size = 0;  // 0: the minimal byte vocabulary (297 tokens)
  uint64_t seed = 1;
  std::string chat_template;
  // Weights drawn as a freshly initialised model's: matrices with standard
  // deviation 1/sqrt(fan-in), embeddings 1/sqrt(embedding_length), norms near
  // 1, so activations stay O(1) through every layer and logits are O(1), as
  // comparing against another engine needs. false keeps the older draw
  // (standard deviation 0.2, logits around +-100) that calibration tests were
  // tuned on.
  bool fresh_init = false;
};

// A SentencePiece-style vocabulary: 3 control tokens, 256 byte tokens, some
// word pieces, then filler pieces up to `size` tokens (0: no filler).
Vocabulary synthetic_vocabulary(int32_t size = 0);

// Writes a model with random weights to `path`.
Status write_synthetic_model(const SyntheticModelSpec& spec, const std::string& path);

// Shapes of real models: synthetic_model_preset_names(), e.g. "smollm2-135m",
// "qwen3-0.6b", "gemma3-270m", "phi4-mini", "smollm3-3b", "lfm2-350m"; and
// tiny models of each architecture for tests ("qwen3-tiny", "gemma3-tiny",
// "phi3-tiny", "smollm3-tiny", "lfm2-tiny"). The presets of the newer architectures draw fresh_init
// weights.
std::optional<SyntheticModelSpec> synthetic_model_preset(std::string_view name, TensorType type);
// The preset names, comma-separated, for usage messages.
const char* synthetic_model_preset_names();

}  // namespace foreshore::engine
