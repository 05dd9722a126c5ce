// Token sampling with per-token log-probabilities and entropy, the signals the
// router's cascade policy uses to judge the edge model's confidence.
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <span>
#include <vector>

#include "engine/tokenizer.h"

namespace foreshore::engine {

struct SamplingParams {
  float temperature = 0.8f;     // 0: greedy
  int32_t top_k = 40;           // 0: off
  float top_p = 0.95f;          // 1: off; 0: only the most likely token (OpenAI's range 0..1)
  float min_p = 0.05f;          // 0: off
  float repeat_penalty = 1.0f;  // 1: off
  int32_t repeat_last_n = 64;
  // OpenAI's penalties, subtracted from a token's logit once it has been
  // generated (presence) and per time it has been (frequency); 0: off.
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  uint64_t seed = 0xC0FFEE;
  int32_t top_logprobs = 0;  // alternatives to report per token (0..20)

  static SamplingParams greedy() {
    SamplingParams p;
    p.temperature = 0.0f;
    return p;
  }
};

struct TokenAlternative {
  TokenId id = -1;
  float logprob = 0.0f;
};

struct SampledToken {
  TokenId id = -1;
  // log p(token) under the model's own distribution (softmax of the raw
  // logits, before temperature and truncation): comparable across requests.
  float logprob = 0.0f;
  // Entropy in nats of that same distribution.
  float entropy = 0.0f;
  std::vector<TokenAlternative> top;  // top_logprobs most likely tokens
};

class Sampler {
 public:
  Sampler(SamplingParams params, int32_t vocab_size);

  // Picks the next token from logits (not modified). `history` is the tokens
  // so far, for the repetition penalty. When `allowed` is set, only tokens it
  // accepts can be picked (JSON mode); the id is -1 when it accepts none.
  SampledToken sample(std::span<const float> logits, std::span<const TokenId> history,
                      const std::function<bool(TokenId)>& allowed = {});

  const SamplingParams& params() const { return params_; }

 private:
  TokenId choose(int32_t n);

  SamplingParams params_;
  std::mt19937_64 rng_;
  // Reused across calls so sampling allocates nothing per token.
  std::vector<float> adjusted_;
  std::vector<int32_t> order_;
  std::vector<float> probs_;
  // How often each token has been sampled, and the distinct ones in order,
  // for the presence and frequency penalties.
  std::vector<int32_t> sampled_count_;
  std::vector<TokenId> sampled_;
};

}  // namespace foreshore::engine
