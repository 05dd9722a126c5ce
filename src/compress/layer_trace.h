// Per-layer measurements of a model on calibration tokens, the evidence
// pruning ranks layers and FFN channels by, taken from the engine's own
// forward pass through its ForwardObserver hook.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "compress/quantize.h"
#include "engine/engine.h"

namespace foreshore::compress {

struct LayerStatistics {
  size_t tokens = 0;
  // Per layer: mean over tokens of 1 - cos(block input, block output), the
  // Block Influence of ShortGPT (Men et al., 2024). Near 0: the block barely
  // changes the residual stream and is the cheapest to remove.
  std::vector<double> block_influence;
  // Per layer, per FFN channel: mean over tokens of |silu(gate) * up|.
  std::vector<std::vector<double>> ffn_mean_abs_activation;
  // Per weight matrix (by tensor name), per input column: the mean over the
  // positions it multiplied of the input's square, llama.cpp's "importance
  // matrix". Weighted rounding (quantize_row_weighted) spends precision where
  // these are large. The output projection sees only the positions whose
  // logits were computed.
  ImportanceMatrix importance;
  // The logits after the last token of the last sequence.
  std::vector<float> last_logits;
};

// Runs every sequence (each on its own, from position 0) and accumulates the
// statistics. Fails when there are no tokens, a sequence exceeds the model's
// context, or an id is outside the vocabulary.
Result<LayerStatistics> measure_layers(std::shared_ptr<const engine::Model> model,
                                       std::span<const std::vector<engine::TokenId>> sequences,
                                       engine::ThreadPool& pool);

// Tokenizes text and cuts it into windows of at most window_tokens tokens
// (capped by the model's context), each starting with BOS where the model's
// prompts do, until max_tokens text tokens are taken. Empty text gives
// no windows.
std::vector<std::vector<engine::TokenId>> tokenize_windows(const engine::Model& model,
                                                           std::string_view text,
                                                           size_t window_tokens, size_t max_tokens);

}  // namespace foreshore::compress
