// Random-weight GGUF models written with the project's own GgufWriter: tiny
// ones for tests, and ones with real models' shapes for benchmarks (speed does
// not depend on weight values).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <string>
#include <vector>

#include "common/result.h"
#include "engine/gguf.h"
#include "engine/tensor_type.h"
#include "engine/tokenizer.h"

namespace foreshore::engine {

struct SyntheticModelSpec {
  std::string architecture = "llama";  // or "qwen2"
  TensorType matrix_type = TensorType::kF32;
  TensorType embedding_type = TensorType::kF32;
  int32_t embedding_length = 64;
  int32_t layer_count = 2;
  int32_t head_count = 4;
  int32_t head_count_kv = 2;
  int32_t feed_forward_length = 128;
  int32_t context_length = 128;
  bool tied_output = false;
  bool llama3_rope_scaling = false;
  float rope_freq_base = 10000.0f;
  int32_t vocab_size = 0;  // 0: the minimal byte vocabulary (297 tokens)
  uint64_t seed = 1;
  std::string chat_template;
};

// A SentencePiece-style vocabulary: 3 control tokens, 256 byte tokens, some
// word pieces, then filler pieces up to `size` tokens (0: no filler).
Vocabulary synthetic_vocabulary(int32_t size = 0);

// Writes a model with random weights to `path`.
Status write_synthetic_model(const SyntheticModelSpec& spec, const std::string& path);

// Shapes of real models: "smollm2-135m", "qwen2.5-0.5b", "llama3.2-1b", "tinyllama-1.1b".
std::optional<SyntheticModelSpec> synthetic_model_preset(std::string_view name,
                                                         TensorType type);

}  // namespace foreshore::engine
