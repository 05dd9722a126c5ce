// How far a model's next-token distributions are from a reference model's on
// the same tokens: the measure behind calibration, pruning and `foreshore eval`.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "common/result.h"
#include "engine/engine.h"

namespace foreshore::compress {

// Log-probabilities of the next token after each prefix of a token sequence:
// row i is the distribution after tokens[0..i].
struct TokenDistributions {
  int32_t vocab_size = 0;
  std::vector<float> log_probs;  // positions() x vocab_size, row-major
  size_t positions() const { return vocab_size ? log_probs.size() / vocab_size : 0; }
  std::span<const float> row(size_t i) const {
    return {log_probs.data() + i * vocab_size, static_cast<size_t>(vocab_size)};
  }
};

// Runs the model over tokens (capped at its context) and keeps every position's
// log-softmax. Fails when the sequence is empty or holds ids outside the vocabulary.
Result<TokenDistributions> next_token_log_probs(std::shared_ptr<const engine::Model> model,
                                                std::span<const engine::TokenId> tokens,
                                                engine::ThreadPool& pool);

struct Divergence {
  size_t positions = 0;
  double mean_kl = 0.0;  // mean over positions of KL(reference || candidate), nats
  double max_kl = 0.0;
  double top1_agreement = 0.0;  // share of positions where both argmaxes are equal
};

// Compares two sets of distributions over the same tokens; both must have the
// same vocabulary and position count (programmer error otherwise).
Divergence compare_distributions(const TokenDistributions& reference,
                                 const TokenDistributions& candidate);

// Mean negative log-likelihood (nats) of tokens[i+1] under row i; perplexity is exp of it.
double mean_negative_log_likelihood(const TokenDistributions& distributions,
                                    std::span<const engine::TokenId> tokens);

}  // namespace foreshore::compress
