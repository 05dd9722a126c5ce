#include "exec/guard.h"

#include <algorithm>
#include <random>

namespace foreshore::exec {

std::string_view to_string(BreakerState state) {
  switch (state) {
    case BreakerState::kClosed:
      return "closed";
    case BreakerState::kOpen:
      return "open";
    case BreakerState::kHalfOpen:
      return "half-open";
  }
  return "closed";
}

CircuitBreaker::CircuitBreaker(BreakerSettings settings) : settings_(settings) {}

bool CircuitBreaker::allow() {
  std::lock_guard lock(mu_);
  if (state_ == BreakerState::kClosed) return true;
  if (state_ == BreakerState::kOpen) {
    if (Clock::now() - opened_at_ < std::chrono::milliseconds(settings_.open_ms)) return false;
    state_ = BreakerState::kHalfOpen;
    probe_in_flight_ = false;
  }
  if (probe_in_flight_) return false;
  probe_in_flight_ = true;
  return true;
}

void CircuitBreaker::record_success() {
  std::lock_guard lock(mu_);
  failures_ = 0;
  state_ = BreakerState::kClosed;
  probe_in_flight_ = false;
}

void CircuitBreaker::record_neither() {
  std::lock_guard lock(mu_);
  probe_in_flight_ = false;
}

void CircuitBreaker::record_failure() {
  std::lock_guard lock(mu_);
  ++failures_;
  if (state_ == BreakerState::kHalfOpen || failures_ >= settings_.failure_threshold) {
    state_ = BreakerState::kOpen;
    opened_at_ = Clock::now();
    probe_in_flight_ = false;
  }
}

BreakerState CircuitBreaker::state() const {
  std::lock_guard lock(mu_);
  if (state_ == BreakerState::kOpen &&
      Clock::now() - opened_at_ >= std::chrono::milliseconds(settings_.open_ms)) {
    return BreakerState::kHalfOpen;
  }
  return state_;
}

double CircuitBreaker::seconds_until_probe() const {
  std::lock_guard lock(mu_);
  if (state_ != BreakerState::kOpen) return 0.0;
  const auto left = std::chrono::milliseconds(settings_.open_ms) - (Clock::now() - opened_at_);
  return std::max(0.0, std::chrono::duration<double>(left).count());
}

bool CircuitBreaker::available() const {
  std::lock_guard lock(mu_);
  if (state_ != BreakerState::kOpen) return state_ == BreakerState::kClosed || !probe_in_flight_;
  return Clock::now() - opened_at_ >= std::chrono::milliseconds(settings_.open_ms);
}

bool is_retryable(const Error& e) {
  if (e.upstream_status == 429 || e.upstream_status == 502 || e.upstream_status == 503 ||
      e.upstream_status == 504 || e.upstream_status == 500)
    return true;
  return e.kind == ErrorKind::kUnavailable || e.kind == ErrorKind::kDeadlineExceeded ||
         e.kind == ErrorKind::kIo;
}

std::chrono::milliseconds backoff_delay(const RetrySettings& s, int32_t attempt, const Error& e) {
  thread_local std::mt19937 rng{std::random_device{}()};
  const int64_t ceiling = std::min<int64_t>(
      s.max_backoff_ms, static_cast<int64_t>(s.base_backoff_ms) << std::min(attempt - 1, 16));
  std::uniform_int_distribution<int64_t> jitter(0, std::max<int64_t>(ceiling, 1));
  const int64_t retry_after = static_cast<int64_t>(e.retry_after_seconds * 1000.0);
  return std::chrono::milliseconds(std::max(jitter(rng), retry_after));
}

}  // namespace foreshore::exec
