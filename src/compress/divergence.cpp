#include "compress/divergence.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace foreshore::compress {

Result<TokenDistributions> next_token_log_probs(std::shared_ptr<const engine::Model> model,
                                                std::span<const engine::TokenId> tokens,
                                                engine::ThreadPool& pool) {
  if (tokens.empty()) {
    return make_error(
        ErrorKind::kInvalidArgument,
        "no tokens to evaluate: give a calibration or evaluation text that is not empty");
  }
  const int32_t vocab = model->config().vocab_size;
  for (engine::TokenId id : tokens) {
    if (id < 0 || id >= vocab) {
      return make_error(ErrorKind::kInvalidArgument,
                        "token id " + std::to_string(id) + " is outside the vocabulary of " +
                            model->config().name + " (" + std::to_string(vocab) +
                            " tokens): the text was tokenized for another model");
    }
  }
  const size_t n = std::min<size_t>(
      tokens.size(), static_cast<size_t>(std::max(1, model->config().context_length)));
  engine::ContextOptions options;
  options.context_length = static_cast<int32_t>(n);
  // InferenceContext::create refuses budgets under 16 tokens; the context
  // length above still limits the cache to n.
  options.kv_memory_budget = model->kv_bytes_per_token() * std::max<size_t>(n, 16);
  FSH_ASSIGN_OR_RETURN(auto context, engine::InferenceContext::create(model, options));

  TokenDistributions out;
  out.vocab_size = vocab;
  out.log_probs.resize(n * static_cast<size_t>(vocab));
  for (size_t i = 0; i < n; ++i) {
    // One token per step: the context only exposes the last position's logits.
    FSH_ASSIGN_OR_RETURN(std::span<const float> logits,
                        context->evaluate(tokens.subspan(i, 1), pool));
    float* row = out.log_probs.data() + i * vocab;
    const float max_logit = *std::max_element(logits.begin(), logits.end());
    double sum = 0.0;
    for (int32_t v = 0; v < vocab; ++v) sum += std::exp(static_cast<double>(logits[v] - max_logit));
    const float log_sum = static_cast<float>(std::log(sum)) + max_logit;
    for (int32_t v = 0; v < vocab; ++v) row[v] = logits[v] - log_sum;
  }
  return out;
}

Divergence compare_distributions(const TokenDistributions& reference,
                                 const TokenDistributions& candidate) {
  if (reference.vocab_size != candidate.vocab_size ||
      reference.positions() != candidate.positions()) {
    throw std::invalid_argument(
        "compare_distributions: the two models saw different tokens or vocabularies");
  }
  Divergence d;
  d.positions = reference.positions();
  if (d.positions == 0) return d;
  size_t agree = 0;
  double total = 0.0;
  for (size_t i = 0; i < d.positions; ++i) {
    auto p = reference.row(i);
    auto q = candidate.row(i);
    double kl = 0.0;
    for (size_t v = 0; v < p.size(); ++v) {
      const double lp = p[v];
      kl += std::exp(lp) * (lp - static_cast<double>(q[v]));
    }
    kl = std::max(0.0, kl);  // rounding can make a near-zero KL slightly negative
    total += kl;
    d.max_kl = std::max(d.max_kl, kl);
    const auto ref_top = std::max_element(p.begin(), p.end()) - p.begin();
    const auto cand_top = std::max_element(q.begin(), q.end()) - q.begin();
    if (ref_top == cand_top) ++agree;
  }
  d.mean_kl = total / static_cast<double>(d.positions);
  d.top1_agreement = static_cast<double>(agree) / static_cast<double>(d.positions);
  return d;
}

double mean_negative_log_likelihood(const TokenDistributions& distributions,
                                    std::span<const engine::TokenId> tokens) {
  const size_t usable = std::min(distributions.positions(), tokens.size());
  if (usable < 2) return 0.0;
  const size_t scored = usable - 1;
  double nll = 0.0;
  for (size_t i = 0; i < scored; ++i) nll -= distributions.row(i)[tokens[i + 1]];
  return nll / static_cast<double>(scored);
}

}  // namespace foreshore::compress
