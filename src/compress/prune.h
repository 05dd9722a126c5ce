// Structured pruning: whole decoder layers and whole FFN channels come out,
// so the smaller model is a plain GGUF of the same architecture that runs
// faster on any engine (no sparse kernels needed).
//
// Layers are ranked by Block Influence on calibration text (ShortGPT: the
// lowest 1 - cos(input, output) goes first). FFN channels are ranked per
// layer by mean |silu(gate) * up| on calibration text times the L2 norm of the
// channel's ffn_down column (the structured form of Wanda's |activation| x
// |weight|), and every layer keeps the same number, since llama/qwen2 GGUF
// has one feed_forward_length. Both rankings come from one pass over the
// original model; FFN channels are not re-ranked after layers are removed.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "engine/engine.h"

namespace foreshore::compress {

struct PruneOptions {
  // Layers to remove by index (0-based), or a count of the lowest-influence
  // layers to remove; not both.
  std::vector<int32_t> remove_layers;
  int32_t remove_layer_count = 0;
  // Share of FFN channels each layer keeps, in (0, 1]; 1 keeps all.
  double ffn_keep = 1.0;
  // Text the rankings are measured on; required when anything is ranked
  // (remove_layer_count > 0 or ffn_keep < 1).
  std::string calibration_text;
  size_t calibration_tokens = 2048;
  size_t calibration_window = 512;
};

struct PrunedLayer {
  int32_t original_index = 0;
  int32_t new_index = -1;        // -1: removed
  double block_influence = 0.0;  // valid only when PruneReport::measured
  int32_t ffn_channels = 0;      // kept in the output (0 when removed)
};

struct PruneReport {
  std::string architecture;
  bool measured = false;  // rankings were computed on calibration text
  size_t calibration_tokens = 0;
  int32_t layers_before = 0;
  int32_t layers_after = 0;
  int32_t feed_forward_before = 0;
  int32_t feed_forward_after = 0;
  std::vector<PrunedLayer> layers;  // one per original layer
  uint64_t tensor_bytes_before = 0;
  uint64_t tensor_bytes_after = 0;
  // Decisions a user should know about: rounding of the channel count to
  // whole quantization blocks, re-quantized tensors.
  std::vector<std::string> notes;
};

struct PrunedModel {
  engine::GgufWriter writer;  // every metadata key of the input, updated counts, pruned tensors
  PruneReport report;
};

// Prunes `model` as the options say. Tensors of F32, F16, BF16 and every
// quantized type the engine computes are supported: removed layers and
// ffn_gate/ffn_up rows are dropped byte for byte; ffn_down, which loses
// columns, is dequantized and re-quantized to its own type. The kept channel
// count is rounded to the nearest multiple of 16 and of ffn_down's block size
// (see the report's notes).
Result<PrunedModel> prune_model(std::shared_ptr<const engine::Model> model,
                                const PruneOptions& options, engine::ThreadPool& pool);

// The opposite of channel pruning: every layer's FFN gets zero channels up to
// `new_length` (ffn_gate and ffn_up gain zero rows, ffn_down zero columns).
// The model computes exactly the same function, since silu(0) * 0 = 0 and a
// zero column adds nothing, but ffn_down's rows, one element per channel, can
// now split into quantization blocks: stories260K's 172 channels fit no block
// type and stay F16, 192 fit Q4_0 and Q8_0. Needs ffn_down in a float type
// (a quantized one already fits its blocks) and no FFN tensors other than
// gate, up, down and norm. feed_forward_length is updated; every other key
// is kept.
Result<engine::GgufWriter> pad_feed_forward(const engine::GgufFile& file, int32_t new_length);

// The FFN width of `file` (its feed_forward_length), or nullopt when it has none.
std::optional<int32_t> feed_forward_length(const engine::GgufFile& file);

}  // namespace foreshore::compress
