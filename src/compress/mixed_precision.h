// Calibrated mixed precision: how much each weight matrix's quantization
// moves the model's next-token distributions on the user's own text, and the
// per-tensor choice of types that fits a size budget with the least total
// divergence.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "compress/divergence.h"
#include "compress/quantize.h"
#include "engine/engine.h"

namespace foreshore::compress {

// Token sequences to measure on; each is evaluated from an empty context.
struct CalibrationSet {
  std::vector<std::vector<engine::TokenId>> sequences;
  size_t token_count() const;
};

// Tokenizes calibration text for `model`. JSONL (first non-blank character
// '{'): one object per line with "prompt" and/or "text" or "expected"; the
// answer follows the prompt, separated by a space. Anything else is plain
// text, one sequence per paragraph (blank-line separated). Each sequence
// starts with the model's BOS where it uses one and is split at the model's
// context length; sequences are taken in order until `max_tokens`.
Result<CalibrationSet> parse_calibration(std::string_view content, std::string_view origin,
                                         const engine::Model& model, size_t max_tokens);
Result<CalibrationSet> load_calibration(const std::string& path, const engine::Model& model,
                                        size_t max_tokens);

// A model's distributions over every calibration position (sequences
// concatenated) and its mean negative log-likelihood of the text (nats).
struct CalibrationRun {
  TokenDistributions distributions;
  double mean_nll = 0.0;
};
Result<CalibrationRun> run_calibration(std::shared_ptr<const engine::Model> model,
                                       const CalibrationSet& calibration, engine::ThreadPool& pool);

// Types a tensor may take from `types`: each one's fitting type (see
// fit_type), without repeats, in ascending size; ties keep `types` order.
std::vector<engine::TensorType> candidate_types(const engine::GgufTensorInfo& tensor,
                                                std::span<const engine::TensorType> types);

struct CandidateSensitivity {
  engine::TensorType type = engine::TensorType::kF32;
  uint64_t bytes = 0;    // the tensor's size as this type
  double mean_kl = 0.0;  // KL(reference || model with only this tensor converted), nats/token
  double top1_agreement = 1.0;
};

struct TensorSensitivity {
  std::string name;
  std::vector<uint64_t> dims;
  engine::TensorType source_type = engine::TensorType::kF32;
  std::vector<CandidateSensitivity> candidates;  // ascending size
};

// For every quantizable tensor of `model`'s file (in file order) and each of
// its candidate types, the divergence from `reference` (the unchanged model's
// distributions on `calibration`) of the model in which only that tensor is
// converted (engine::Model::with_matrix: nothing else is copied). A candidate equal to the stored
// type costs nothing to measure: its divergence is 0. Progress is reported in models evaluated.
// With `importance`, candidates are rounded by it, as build_quantized will.
Result<std::vector<TensorSensitivity>> measure_sensitivities(
    std::shared_ptr<const engine::Model> model, const CalibrationSet& calibration,
    const TokenDistributions& reference, std::span<const engine::TensorType> types,
    engine::ThreadPool& pool, const ProgressFn& progress = {},
    const ImportanceMatrix* importance = nullptr);

// A model whose FFN was widened with zero channels (pad_feed_forward) so that
// ffn_down's rows split into the blocks of the smallest quantized type among
// `types`. `file` reads `bytes`, which move with it.
struct PaddedModel {
  std::vector<uint8_t> bytes;
  std::shared_ptr<engine::GgufFile> file;
  int32_t channels_before = 0;
  int32_t channels_after = 0;
};

// The padded version of `file` for these candidate types, or nullopt when
// there is nothing to gain: ffn_down already fits those blocks, no candidate
// is a block type, or the model's FFN cannot be padded (the error is kept
// for a caller that insisted on padding).
Result<std::optional<PaddedModel>> pad_for_types(const engine::GgufFile& file,
                                                 std::span<const engine::TensorType> types);

// `file`'s sensitivities taken from those measured on its padded version:
// padding is exact, so a candidate changes the model the same way in both.
// Only candidates that fit `file`'s own shapes are kept, sized for them.
// nullopt when some tensor is left with none (e.g. --types Q4_0 alone, where
// unpadded ffn_down rows fit nothing).
std::optional<std::vector<TensorSensitivity>> sensitivities_without_padding(
    const engine::GgufFile& file, std::span<const TensorSensitivity> padded);

// What a plan must fit: the output file's size, or bits per weight over all
// tensors (llama.cpp's "BPW": tensor bytes * 8 / elements). Exactly one is set.
struct SizeTarget {
  uint64_t file_bytes = 0;
  double bits_per_weight = 0.0;
};

struct MixedPrecisionPlan {
  std::vector<TensorChoice> choices;  // one per tensor of the file, in file order
  uint64_t file_bytes = 0;            // exact size of the output file
  uint64_t smallest_file_bytes = 0;   // every tensor at its smallest candidate
  uint64_t largest_file_bytes = 0;    // every tensor at its largest candidate
  double bits_per_weight = 0.0;
  // Sum of the chosen candidates' divergences: the plan's divergence if
  // tensors' errors added up independently (the measured one is the check).
  double predicted_kl = 0.0;
};

// Chooses one candidate per tensor so that the output fits `target` with the
// least predicted divergence: an exact multiple-choice knapsack over sizes
// (rounded up to at most 2^18 budget units, so the target is never exceeded;
// bytes the rounding leaves go to the best upgrades that still fit). Ties go
// to the smaller type; the plan depends only on its inputs. Fails when even
// the smallest candidates do not fit.
Result<MixedPrecisionPlan> plan_mixed_precision(const engine::GgufFile& file,
                                                std::span<const TensorSensitivity> sensitivities,
                                                const SizeTarget& target);

// Bits per weight of a choice of types: all tensor bytes * 8 / all elements.
double bits_per_weight(const engine::GgufFile& file, std::span<const TensorChoice> choices);

}  // namespace foreshore::compress
