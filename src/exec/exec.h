// Running a routing Plan over the configured tiers: edge, cloud, cascade and
// consistency plans, with retries, circuit breakers, fallbacks and a fallback
// of last resort (a degraded edge answer rather than no answer).
//
// Privacy is enforced here as well as in the router: a call to a cloud tier
// is refused at one choke point unless the plan allows the cloud, so no path
// (fallback, retry, escalation) can send device-only data out.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "exec/guard.h"
#include "exec/shadow.h"
#include "route/router.h"

namespace foreshore::exec {

struct ExecutionResult {
  backend::Completion completion;
  std::string tier;       // the tier whose answer was served
  bool degraded = false;  // served by a fallback of last resort
  // Why, in one line for the x-foreshore-degraded-reason header and the body
  // ("cloud tier 'cloud' failed: ...", "cloud tier 'cloud' is unavailable").
  std::string degraded_reason;
  bool escalated = false;            // cascade moved to the cloud
  bool fell_back = false;            // a tier failed and another served
  std::optional<double> confidence;  // edge answer's mean token probability (exp mean logprob)
  std::optional<double> similarity;  // consistency: agreement of the two answers
  std::vector<std::string> trace;    // what happened, step by step, for logs and headers
};

struct ExecutorSettings {
  RetrySettings retry;
  BreakerSettings breaker;
};

// Measures of the edge answer the cascade compares against its thresholds.
struct Confidence {
  double mean_logprob = 0.0;
  double min_logprob = 0.0;
  double mean_entropy = 0.0;
  int32_t tokens = 0;
};
Confidence measure_confidence(const std::vector<backend::TokenLogprob>& logprobs,
                              size_t first_n = SIZE_MAX);
// Why the cascade should escalate, or empty when the edge looks sure.
std::string escalation_reason(const Confidence& c, const route::CascadeSettings& s);

// Similarity of two answers in [0, 1]: Jaccard overlap of lower-cased word sets.
double answer_similarity(std::string_view a, std::string_view b);

// The router's view of a configured tier: placement and the data it is
// cleared for, prices, and latency/quality priors until traffic is measured.
// The gateway and the simulator both build their routers from it.
route::TierProfile tier_profile(const backend::TierConfig& tier, int32_t context_length);

// Called with the name of the tier whose deltas follow.
using SourceSink = std::function<void(const std::string& tier)>;

class Executor {
 public:
  Executor(std::map<std::string, std::shared_ptr<backend::Backend>> tiers,
           ExecutorSettings settings, route::Router* router);

  // Runs the plan. With on_delta the served answer is streamed as produced
  // (cascade holds back the first tokens until it has decided); on_source is
  // told, before each delta, which tier produced it, so that a stream names
  // the tier that actually answers (a fallback's, not the plan's first).
  // Errors are returned only when nothing could be served.
  Result<ExecutionResult> run(const route::Plan& plan, const backend::BackendRequest& request,
                              const backend::DeltaSink& on_delta, const SourceSink& on_source = {});

  // Tier availability for the router's signals.
  bool available(const std::string& tier) const;
  BreakerState breaker_state(const std::string& tier) const;
  // Seconds until `tier`'s open breaker lets a probe through (0: not open).
  double seconds_until_probe(const std::string& tier) const;
  std::shared_ptr<backend::Backend> backend(const std::string& tier) const;

 private:
  struct Tier {
    std::shared_ptr<backend::Backend> backend;
    std::unique_ptr<CircuitBreaker> breaker;
  };
  // The only way tiers are called. Refuses a cloud tier unless cloud_allowed.
  Result<backend::Completion> call(const std::string& tier, bool cloud_allowed,
                                   const backend::BackendRequest& request,
                                   const backend::DeltaSink& on_delta, ExecutionResult& out,
                                   int32_t max_attempts = 0, const SourceSink& on_source = {});

  Result<ExecutionResult> run_plan(const route::Plan& plan, const backend::BackendRequest& request,
                                   const backend::DeltaSink& on_delta, const SourceSink& on_source);
  Result<ExecutionResult> run_cascade(const route::Plan& plan,
                                      const backend::BackendRequest& request,
                                      const backend::DeltaSink& on_delta,
                                      const SourceSink& on_source);
  Result<ExecutionResult> run_consistency(const route::Plan& plan,
                                          const backend::BackendRequest& request,
                                          const backend::DeltaSink& on_delta,
                                          const SourceSink& on_source);

  std::map<std::string, Tier> tiers_;
  ExecutorSettings settings_;
  route::Router* router_;
};

}  // namespace foreshore::exec
