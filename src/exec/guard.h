// Guards around tier calls: per-tier circuit breakers and a retry policy with
// jittered exponential backoff that honours Retry-After and the deadline.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <string>

#include "common/result.h"

namespace foreshore::exec {

enum class BreakerState { kClosed = 0, kOpen = 1, kHalfOpen = 2 };
std::string_view to_string(BreakerState state);

struct BreakerSettings {
  int32_t failure_threshold = 5;  // consecutive failures that open the breaker
  int32_t open_ms = 5000;         // how long it stays open before a probe
};

// Closed: calls flow. Open: calls fail fast until open_ms passes. Half-open:
// one probe call is let through; its success closes the breaker, its failure
// opens it again.
class CircuitBreaker {
 public:
  explicit CircuitBreaker(BreakerSettings settings = {});
  // True when a call may proceed now (takes the probe slot when half-open).
  bool allow();
  void record_success();
  void record_failure();
  // The call ended saying nothing of the tier's health (the request's own
  // fault, a guard refusal, a cancelled client, an upstream's 429): a probe
  // slot it held is freed, so the next call probes instead of the breaker
  // staying half-open for good.
  void record_neither();
  // Open with its cooldown run out reads as half-open: the next call
  // probes (no state change), so readiness does not report a breaker that
  // no request has touched since as failing.
  BreakerState state() const;
  // True unless open with its cooldown still running (no state change).
  bool available() const;
  // Seconds until an open breaker lets a probe through (0 when not open):
  // the Retry-After of a request it refused.
  double seconds_until_probe() const;

 private:
  using Clock = std::chrono::steady_clock;
  BreakerSettings settings_;
  mutable std::mutex mu_;
  BreakerState state_ = BreakerState::kClosed;
  int32_t failures_ = 0;
  Clock::time_point opened_at_{};
  bool probe_in_flight_ = false;
};

struct RetrySettings {
  int32_t max_attempts = 3;  // including the first
  int32_t base_backoff_ms = 100;
  int32_t max_backoff_ms = 2000;
};

// Whether an error is worth retrying (overload, unavailability, timeouts),
// as opposed to one that will fail the same way again (bad request).
bool is_retryable(const Error& error);

// Backoff before attempt `attempt` (1-based retries): full jitter on an
// exponential ceiling, never less than the upstream's Retry-After.
std::chrono::milliseconds backoff_delay(const RetrySettings& settings, int32_t attempt,
                                        const Error& error);

}  // namespace foreshore::exec
