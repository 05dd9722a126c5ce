// What gateway replicas enforce together through the state backend
// (src/state): requests and tokens per minute and spend budgets, per client
// key and per tier; circuit breakers one replica opened; the tier a session
// is pinned to. With `state.backend: local` the same rules hold for this one
// process.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "hybrid/config.h"
#include "hybrid/request.h"
#include "route/router.h"
#include "state/state.h"

namespace foreshore::hybrid {

using config::Limits;
using config::LimitsConfig;

// Budget held back at admission and what it stood for, settled once the
// request's real cost is known (SharedLimits::settle).
struct Reservation {
  std::vector<std::pair<std::string, int64_t>> holds;  // spend counter, micro-dollars held
  std::vector<std::string> token_counters;             // per-minute token windows to charge
  std::vector<std::string> spend_counters;             // spend counted without a limit (a team)
};

struct VirtualKey;

// The key of an 'Authorization: Bearer KEY' header, the scheme's name in any
// case (RFC 9110: "bearer KEY" too); empty without one.
std::string_view bearer_key(std::string_view authorization_header);

// The client a request is counted for: a digest of its bearer key (never the
// key itself), or "anonymous".
std::string client_identity(std::string_view authorization_header);

class SharedLimits {
 public:
  SharedLimits(std::unique_ptr<state::SharedState> state, bool budgets_fail_open,
               LimitsConfig limits, std::chrono::milliseconds breaker_open);

  // Counts the request against its client's and its tiers' limits and holds
  // back its worst-case cost (prompt and max_tokens at the plan's tiers'
  // prices) from their budgets, so that replicas together never spend past a
  // budget by more than an estimate's error. A Refusal (rate limited or over budget, or unavailable
  // when a budget cannot be checked and budgets fail closed) when refused. A virtual key's own
  // limits, tiers and data classes replace limits.per_key.
  std::optional<Refusal> admit(const std::string& client, const VirtualKey* key,
                               const route::Decision& decision, const Request& api,
                               const std::vector<backend::TierConfig>& tiers,
                               Reservation& reservation);
  // Replaces the hold with the real cost and counts the tokens used.
  void settle(const Reservation& reservation, double cost_usd, int64_t tokens);

  // A breaker another replica opened (cached for a fraction of a second, so
  // that reading it costs no round trip on most requests); always false
  // with the local backend, where the executor's own breakers are all there is.
  bool breaker_open(const std::string& tier);
  // Tells the other replicas this one's breaker for `tier` opened.
  void publish_breaker_open(const std::string& tier);

  // Shadow verdicts of every replica, counted together (state shared only):
  // {scored, agreed}, nullopt with the local backend.
  void record_shadow_verdict(bool agreed);
  std::optional<std::pair<int64_t, int64_t>> shadow_agreement();
  // The complexity threshold a replica's shadow controller last moved to,
  // for the others to take (read at most once a second).
  void publish_threshold(double threshold);
  std::optional<double> shared_threshold();

  std::optional<std::string> pinned_tier(const std::string& session);
  void pin(const std::string& session, const std::string& tier);

  const state::SharedState& state() const { return *state_; }
  state::SharedState& state() { return *state_; }
  // True when state is shared through Redis (not this process alone).
  bool shared() const { return state_->backend() != "local"; }

 private:
  // The counters one request changes at admission, and what each one's
  // refusal tells the client.
  struct Admission {
    std::vector<state::CounterChange> changes;
    std::vector<std::string> what;
  };
  // Adds `scope`'s limits to `admission`; an error when a budget governs
  // it and cannot be checked (budgets fail closed, Redis down).
  std::optional<Refusal> add_limits(const std::string& scope, const Limits& limits,
                                    int64_t hold_micro_usd, Admission& admission);

  std::unique_ptr<state::SharedState> state_;
  const bool budgets_fail_open_;
  const LimitsConfig limits_;
  const std::chrono::milliseconds breaker_open_;
  std::mutex mu_;
  std::map<std::string, std::pair<bool, std::chrono::steady_clock::time_point>> breaker_cache_;
  std::optional<double> threshold_cache_;
  std::chrono::steady_clock::time_point threshold_read_{};
};

}  // namespace foreshore::hybrid
