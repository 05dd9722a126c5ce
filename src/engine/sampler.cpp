#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace foreshore::engine {

Sampler::Sampler(SamplingParams params, int32_t vocab_size) : params_(params), rng_(params.seed) {
  params_.top_logprobs = std::clamp(params_.top_logprobs, 0, 20);
  adjusted_.resize(static_cast<size_t>(vocab_size));
  order_.resize(static_cast<size_t>(vocab_size));
  probs_.resize(static_cast<size_t>(vocab_size));
  if (params_.presence_penalty != 0.0f || params_.frequency_penalty != 0.0f) {
    sampled_count_.assign(static_cast<size_t>(vocab_size), 0);
    sampled_.reserve(256);
  }
}

// Picks a token from adjusted_ (greedy, or by temperature, top-k, min-p and
// top-p); -1 when every logit is -inf (a filter refused them all).
TokenId Sampler::choose(int32_t n) {
  constexpr float kRefused = -std::numeric_limits<float>::infinity();
  TokenId chosen = 0;
  if (params_.temperature <= 0.0f) {
    chosen = static_cast<TokenId>(std::max_element(adjusted_.begin(), adjusted_.begin() + n) -
                                  adjusted_.begin());
    if (n == 0 || adjusted_[static_cast<size_t>(chosen)] == kRefused) return -1;
  } else {
    std::iota(order_.begin(), order_.begin() + n, 0);
    int32_t keep = n;
    if (params_.top_k > 0 && params_.top_k < keep) keep = params_.top_k;
    auto by_logit = [this](int32_t a, int32_t b) {
      return adjusted_[static_cast<size_t>(a)] > adjusted_[static_cast<size_t>(b)];
    };
    std::partial_sort(order_.begin(), order_.begin() + keep, order_.begin() + n, by_logit);
    const float top = adjusted_[static_cast<size_t>(order_[0])];
    if (top == kRefused) return -1;
    while (adjusted_[static_cast<size_t>(order_[static_cast<size_t>(keep - 1)])] == kRefused)
      --keep;
    double total = 0.0;
    for (int32_t i = 0; i < keep; ++i) {
      const float p =
          std::exp((adjusted_[static_cast<size_t>(order_[i])] - top) / params_.temperature);
      probs_[static_cast<size_t>(i)] = p;
      total += p;
    }
    if (params_.min_p > 0.0f) {
      // The first entry has probability weight 1 (relative to the maximum).
      int32_t m = 1;
      while (m < keep && probs_[static_cast<size_t>(m)] >= params_.min_p) ++m;
      keep = m;
      total = 0.0;
      for (int32_t i = 0; i < keep; ++i) total += probs_[static_cast<size_t>(i)];
    }
    if (params_.top_p < 1.0f) {
      // The most likely token is always kept, so top_p 0 keeps it alone.
      double cumulative = 0.0;
      int32_t m = 0;
      while (m < keep) {
        cumulative += probs_[static_cast<size_t>(m)] / total;
        ++m;
        if (cumulative >= params_.top_p) break;
      }
      keep = std::max(m, 1);
      total = 0.0;
      for (int32_t i = 0; i < keep; ++i) total += probs_[static_cast<size_t>(i)];
    }
    std::uniform_real_distribution<double> uniform(0.0, total);
    double r = uniform(rng_);
    chosen = order_[static_cast<size_t>(keep - 1)];
    for (int32_t i = 0; i < keep; ++i) {
      r -= probs_[static_cast<size_t>(i)];
      if (r <= 0.0) {
        chosen = order_[static_cast<size_t>(i)];
        break;
      }
    }
  }

  return chosen;
}

SampledToken Sampler::sample(std::span<const float> logits, std::span<const TokenId> history,
                             const std::function<bool(TokenId)>& allowed) {
  const int32_t n = static_cast<int32_t>(std::min(logits.size(), adjusted_.size()));
  SampledToken out;

  // Statistics of the model's own distribution.
  float max_logit = -std::numeric_limits<float>::infinity();
  for (int32_t i = 0; i < n; ++i) max_logit = std::max(max_logit, logits[i]);
  double sum = 0.0;
  for (int32_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(logits[i] - max_logit));
  const double log_z = static_cast<double>(max_logit) + std::log(sum);
  double entropy = 0.0;
  for (int32_t i = 0; i < n; ++i) {
    const double lp = logits[i] - log_z;
    entropy -= std::exp(lp) * lp;
  }
  out.entropy = static_cast<float>(entropy);

  std::copy(logits.begin(), logits.begin() + n, adjusted_.begin());
  if (params_.repeat_penalty != 1.0f && params_.repeat_last_n > 0) {
    const size_t start = history.size() > static_cast<size_t>(params_.repeat_last_n)
                             ? history.size() - static_cast<size_t>(params_.repeat_last_n)
                             : 0;
    for (size_t i = start; i < history.size(); ++i) {
      const TokenId t = history[i];
      if (t < 0 || t >= n) continue;
      float& l = adjusted_[static_cast<size_t>(t)];
      // Penalise once per distinct token: repeated occurrences would compound.
      if (std::find(history.begin() + static_cast<std::ptrdiff_t>(start),
                    history.begin() + static_cast<std::ptrdiff_t>(i),
                    t) != history.begin() + static_cast<std::ptrdiff_t>(i))
        continue;
      l = l > 0 ? l / params_.repeat_penalty : l * params_.repeat_penalty;
    }
  }

  for (const TokenId t : sampled_) {
    adjusted_[static_cast<size_t>(t)] -=
        params_.presence_penalty +
        params_.frequency_penalty * static_cast<float>(sampled_count_[static_cast<size_t>(t)]);
  }

  TokenId chosen = choose(n);
  if (allowed) {
    // Rejection: a refused token is taken out and the choice made again. A
    // real model rarely needs more than a few; past kMaxRejections every
    // refused token goes at once, so each step stays bounded.
    constexpr int32_t kMaxRejections = 32;
    int32_t rejections = 0;
    while (chosen >= 0 && !allowed(chosen)) {
      adjusted_[static_cast<size_t>(chosen)] = -std::numeric_limits<float>::infinity();
      if (++rejections == kMaxRejections) {
        for (int32_t i = 0; i < n; ++i) {
          float& l = adjusted_[static_cast<size_t>(i)];
          if (l != -std::numeric_limits<float>::infinity() && !allowed(i)) {
            l = -std::numeric_limits<float>::infinity();
          }
        }
      }
      chosen = choose(n);
    }
  }

  out.id = chosen;
  if (chosen < 0) return out;
  if (!sampled_count_.empty() && chosen < n && sampled_count_[static_cast<size_t>(chosen)]++ == 0) {
    sampled_.push_back(chosen);
  }
  out.logprob = static_cast<float>(logits[static_cast<size_t>(chosen)] - log_z);
  if (params_.top_logprobs > 0) {
    const int32_t k = std::min(params_.top_logprobs, n);
    std::iota(order_.begin(), order_.begin() + n, 0);
    std::partial_sort(order_.begin(), order_.begin() + k, order_.begin() + n,
                      [&logits](int32_t a, int32_t b) {
                        return logits[static_cast<size_t>(a)] > logits[static_cast<size_t>(b)];
                      });
    out.top.reserve(static_cast<size_t>(k));
    for (int32_t i = 0; i < k; ++i) {
      const TokenId id = order_[static_cast<size_t>(i)];
      out.top.push_back({id, static_cast<float>(logits[static_cast<size_t>(id)] - log_z)});
    }
  }
  return out;
}

}  // namespace foreshore::engine
