// Tiny random GGUF models written with the project's own GgufWriter, for tests
// that need a model of a given architecture and tensor type.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/engine.h"

namespace sy::testing {

struct TinyModelSpec {
  std::string architecture = "llama";  // or "qwen2"
  engine::TensorType matrix_type = engine::TensorType::kF32;
  engine::TensorType embedding_type = engine::TensorType::kF32;
  int32_t embedding_length = 64;
  int32_t layer_count = 2;
  int32_t head_count = 4;
  int32_t head_count_kv = 2;
  int32_t feed_forward_length = 128;
  int32_t context_length = 128;
  bool tied_output = false;
  bool llama3_rope_scaling = false;
  float rope_freq_base = 10000.0f;
  uint64_t seed = 1;
  std::string chat_template;
};

// A SentencePiece-style vocabulary of 3 control tokens, 256 byte tokens and
// some word pieces; vocab size is 256 + 3 + word count (a multiple of 32 when possible).
engine::Vocabulary tiny_vocabulary();

// Writes a model with random weights to `path`.
void write_tiny_model(const TinyModelSpec& spec, const std::string& path);

// A fresh temporary file path (removed by the OS temp cleaner, unique per call).
std::string temp_path(const std::string& suffix);

// Folder holding the shared real models (../shared/data/models of the source tree).
std::string shared_models_dir();

}  // namespace sy::testing
