#include "compress/layer_trace.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <numbers>
#include <string>
#include <utility>

namespace foreshore::compress {
namespace {

using engine::ModelConfig;
using engine::TokenId;

double cosine_similarity(const float* a, const float* b, int64_t n) {
  double ab = 0.0, aa = 0.0, bb = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    ab += static_cast<double>(a[i]) * b[i];
    aa += static_cast<double>(a[i]) * a[i];
    bb += static_cast<double>(b[i]) * b[i];
  }
  if (aa == 0.0 || bb == 0.0) return aa == bb ? 1.0 : 0.0;
  return ab / std::sqrt(aa * bb);
}

// Sums what the engine's forward pass shows of each layer into `stats`.
class LayerStatisticsObserver final : public engine::ForwardObserver {
 public:
  LayerStatisticsObserver(const ModelConfig& config, LayerStatistics& stats)
      : d_(config.embedding_length), ff_(config.feed_forward_length), stats_(stats) {}

  void on_block(int32_t layer, std::span<const float> input, std::span<const float> output,
                int32_t n) override {
    double& influence = stats_.block_influence[static_cast<size_t>(layer)];
    for (int64_t t = 0; t < n; ++t) {
      influence += 1.0 - cosine_similarity(&input[t * d_], &output[t * d_], d_);
    }
  }

  void on_ffn_activation(int32_t layer, std::span<const float> activation, int32_t n) override {
    std::vector<double>& sums = stats_.ffn_mean_abs_activation[static_cast<size_t>(layer)];
    for (int64_t t = 0; t < n; ++t) {
      for (int64_t j = 0; j < ff_; ++j) sums[j] += std::fabs(activation[t * ff_ + j]);
    }
  }

  void on_matrix_input(int32_t layer, MatrixInput kind, std::span<const float> input,
                       int32_t n) override {
    SquareSums& sums = square_sums_[{layer, kind}];
    const size_t cols = input.size() / static_cast<size_t>(n);
    sums.sums.resize(cols, 0.0);
    for (size_t t = 0; t < static_cast<size_t>(n); ++t) {
      for (size_t j = 0; j < cols; ++j) {
        sums.sums[j] += static_cast<double>(input[t * cols + j]) * input[t * cols + j];
      }
    }
    sums.rows += static_cast<size_t>(n);
  }

  // The mean squares, under the names of the matrices that read each input.
  void finish(const engine::GgufFile& file) {
    for (const auto& [key, sums] : square_sums_) {
      std::vector<float> mean(sums.sums.size());
      for (size_t j = 0; j < mean.size(); ++j) {
        mean[j] = static_cast<float>(sums.sums[j] / static_cast<double>(sums.rows));
      }
      for (const std::string& name : readers(file, key.first, key.second)) {
        stats_.importance[name] = mean;
      }
    }
  }

 private:
  struct SquareSums {
    std::vector<double> sums;
    size_t rows = 0;
  };

  static std::vector<std::string> readers(const engine::GgufFile& file, int32_t layer,
                                          MatrixInput kind) {
    const std::string prefix = "blk." + std::to_string(layer) + ".";
    switch (kind) {
      case MatrixInput::kAttentionQkv:
        return {prefix + "attn_q.weight", prefix + "attn_k.weight", prefix + "attn_v.weight"};
      case MatrixInput::kAttentionOutput:
        return {prefix + "attn_output.weight"};
      case MatrixInput::kFfnGateUp:
        return {prefix + "ffn_gate.weight", prefix + "ffn_up.weight"};
      case MatrixInput::kFfnDown:
        return {prefix + "ffn_down.weight"};
      case MatrixInput::kOutput:
        // A model without output.weight multiplies by its token embedding.
        return {file.find_tensor("output.weight") ? "output.weight" : "token_embd.weight"};
    }
    return {};
  }

  const int64_t d_, ff_;
  LayerStatistics& stats_;
  std::map<std::pair<int32_t, MatrixInput>, SquareSums> square_sums_;
};

}  // namespace

Result<LayerStatistics> measure_layers(std::shared_ptr<const engine::Model> model,
                                       std::span<const std::vector<TokenId>> sequences,
                                       engine::ThreadPool& pool) {
  const ModelConfig& c = model->config();
  size_t total = 0;
  for (size_t s = 0; s < sequences.size(); ++s) {
    const auto& seq = sequences[s];
    if (seq.size() > static_cast<size_t>(c.context_length)) {
      return make_error(ErrorKind::kInvalidArgument,
                        "calibration sequence " + std::to_string(s) + " has " +
                            std::to_string(seq.size()) + " tokens, more than the context of " +
                            c.name + " (" + std::to_string(c.context_length) +
                            "); cut it into windows (tokenize_windows)");
    }
    for (TokenId id : seq) {
      if (id < 0 || id >= c.vocab_size) {
        return make_error(ErrorKind::kInvalidArgument,
                          "token id " + std::to_string(id) + " in calibration sequence " +
                              std::to_string(s) + " is outside the vocabulary of " + c.name);
      }
    }
    total += seq.size();
  }
  if (total == 0) {
    return make_error(ErrorKind::kInvalidArgument,
                      "no calibration tokens: give a calibration text that is not empty");
  }

  LayerStatistics stats;
  const size_t layers = model->layers().size();
  stats.block_influence.assign(layers, 0.0);
  stats.ffn_mean_abs_activation.assign(
      layers, std::vector<double>(static_cast<size_t>(c.feed_forward_length), 0.0));
  LayerStatisticsObserver observer(c, stats);
  for (const auto& seq : sequences) {
    if (seq.empty()) continue;
    engine::ContextOptions options;
    options.context_length = static_cast<int32_t>(seq.size());
    // create() refuses budgets under 16 tokens; the context length caps the cache.
    options.kv_memory_budget = model->kv_bytes_per_token() * std::max<size_t>(seq.size(), 16);
    FSH_ASSIGN_OR_RETURN(auto context, engine::InferenceContext::create(model, options));
    context->set_observer(&observer);
    FSH_ASSIGN_OR_RETURN(std::span<const float> logits, context->evaluate(seq, pool));
    stats.last_logits.assign(logits.begin(), logits.end());
    stats.tokens += seq.size();
  }
  observer.finish(model->file());
  const double count = static_cast<double>(stats.tokens);
  for (size_t li = 0; li < layers; ++li) {
    stats.block_influence[li] /= count;
    for (double& a : stats.ffn_mean_abs_activation[li]) a /= count;
  }
  return stats;
}

std::vector<std::vector<TokenId>> tokenize_windows(const engine::Model& model,
                                                   std::string_view text, size_t window_tokens,
                                                   size_t max_tokens) {
  const engine::Tokenizer& tokenizer = model.tokenizer();
  const std::vector<TokenId> ids = tokenizer.encode(text, false, false);
  const TokenId bos = tokenizer.bos();
  // Windows start as the model's prompts do: with BOS only where it adds one.
  const size_t prefix = bos >= 0 && tokenizer.vocabulary().add_bos ? 1 : 0;
  const size_t window = std::min<size_t>(
      std::max<size_t>(window_tokens, prefix + 1),
      std::max<size_t>(static_cast<size_t>(model.config().context_length), prefix + 1));
  const size_t body = window - prefix;
  const size_t taken = std::min(ids.size(), max_tokens);

  std::vector<std::vector<TokenId>> windows;
  for (size_t begin = 0; begin < taken; begin += body) {
    const size_t end = std::min(taken, begin + body);
    std::vector<TokenId>& w = windows.emplace_back();
    w.reserve(prefix + end - begin);
    if (prefix != 0) w.push_back(bos);
    w.insert(w.end(), ids.begin() + static_cast<std::ptrdiff_t>(begin),
             ids.begin() + static_cast<std::ptrdiff_t>(end));
  }
  return windows;
}

}  // namespace foreshore::compress
