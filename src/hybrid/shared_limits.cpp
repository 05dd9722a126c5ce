#include "hybrid/shared_limits.h"

#include <strings.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <ctime>

#include "common/sha256.h"
#include "hybrid/pipeline.h"
#include "hybrid/virtual_keys.h"

namespace foreshore::hybrid {
namespace {

constexpr std::chrono::milliseconds kWindowTtl{120000};  // a minute's window, and then some
constexpr std::chrono::milliseconds kPinTtl{3600000};    // a session pin lasts an idle hour
constexpr std::chrono::milliseconds kBreakerCache{100};
// max_tokens when the client sets none, for the worst case a budget holds back.
constexpr int32_t kDefaultMaxTokens = 1024;

int64_t to_micro_usd(double usd) {
  return static_cast<int64_t>(std::ceil(usd * 1e6));
}

std::string minute_suffix() {
  return ":" + std::to_string(std::time(nullptr) / 60);
}

double seconds_to_next_minute() {
  return static_cast<double>(60 - std::time(nullptr) % 60);
}

Refusal rate_limited(const std::string& what) {
  Refusal e;
  e.kind = RefusalKind::kRateLimited;
  e.code = "rate_limit_exceeded";
  e.message = what + "; retry after the current minute";
  e.retry_after_seconds = seconds_to_next_minute();
  return e;
}

// A session id is the client's (a header, or OpenAI's `user`, often an email
// address): the shared state, which may be another host, holds its digest.
std::string pin_key(const std::string& session) {
  return "pin:" + sha256_hex(session).substr(0, 32);
}

}  // namespace

std::string_view bearer_key(std::string_view authorization_header) {
  if (authorization_header.size() < 7 ||
      strncasecmp(authorization_header.data(), "Bearer ", 7) != 0) {
    return {};
  }
  return authorization_header.substr(7);
}

std::string client_identity(std::string_view authorization_header) {
  const std::string_view key = bearer_key(authorization_header);
  if (key.empty()) return "anonymous";
  const std::string digest = sha256_hex(key);
  return digest.empty() ? "anonymous" : "k" + digest.substr(0, 24);
}

SharedLimits::SharedLimits(std::unique_ptr<state::SharedState> state, bool budgets_fail_open,
                           LimitsConfig limits, std::chrono::milliseconds breaker_open)
    : state_(std::move(state)),
      budgets_fail_open_(budgets_fail_open),
      limits_(std::move(limits)),
      breaker_open_(breaker_open) {}

std::optional<Refusal> SharedLimits::add_limits(const std::string& scope, const Limits& limits,
                                                int64_t hold_micro_usd, Admission& admission) {
  const auto note = [&](state::CounterChange change, std::string what) {
    admission.changes.push_back(std::move(change));
    admission.what.push_back(std::move(what));
  };
  if (limits.requests_per_minute > 0) {
    note({"rpm:" + scope + minute_suffix(), 1, limits.requests_per_minute, kWindowTtl},
         scope + " is over its limit of " + std::to_string(limits.requests_per_minute) +
             " requests per minute");
  }
  if (limits.tokens_per_minute > 0) {
    note(
        {"tpm:" + scope + minute_suffix(), 0, limits.tokens_per_minute, kWindowTtl},
        scope + " has used its " + std::to_string(limits.tokens_per_minute) + " tokens per minute");
  }
  if (limits.budget_usd > 0) {
    if (!budgets_fail_open_ && !state_->connected()) {
      Refusal e;
      e.kind = RefusalKind::kUnavailable;
      e.code = "budget_state_unavailable";
      e.message = "The shared state that holds " + scope +
                  "'s budget cannot be reached and budgets fail closed (state.budgets_when_down); "
                  "retry shortly";
      e.retry_after_seconds = 1;
      return e;
    }
    note({"spend:" + scope, hold_micro_usd, to_micro_usd(limits.budget_usd),
          std::chrono::milliseconds(0)},
         scope + "|" + std::to_string(limits.budget_usd));
  }
  return std::nullopt;
}

std::optional<Refusal> SharedLimits::admit(const std::string& client, const VirtualKey* key,
                                           const route::Decision& decision, const Request& api,
                                           const std::vector<backend::TierConfig>& tiers,
                                           Reservation& reservation) {
  // The tiers this plan may call, and what a worst-case answer costs on them.
  std::vector<const backend::TierConfig*> used;
  const route::Plan& plan = decision.plan;
  const bool edge = plan.kind != route::PlanKind::kCloud;
  const bool cloud = plan.kind != route::PlanKind::kEdge && plan.cloud_allowed;
  for (const auto& t : tiers) {
    const bool named = (edge && t.name == plan.edge_tier) || (cloud && t.name == plan.cloud_tier) ||
                       std::find(plan.fallback_tiers.begin(), plan.fallback_tiers.end(), t.name) !=
                           plan.fallback_tiers.end();
    if (named) used.push_back(&t);
  }
  int64_t prompt_chars = 0;
  for (const auto& m : api.backend.messages) prompt_chars += static_cast<int64_t>(m.content.size());
  if (api.backend.prompt) prompt_chars += static_cast<int64_t>(api.backend.prompt->size());
  backend::Usage worst;
  worst.prompt_tokens = static_cast<int32_t>(prompt_chars + 16);  // a token is at least a byte
  worst.completion_tokens = api.backend.params.max_tokens.value_or(kDefaultMaxTokens);
  int64_t hold = 0;
  for (const auto* t : used) hold += to_micro_usd(completion_cost_usd(*t, worst));

  Admission admission;
  if (key != nullptr) {
    const auto forbidden = [&](const std::vector<std::string>& allowed, const std::string& what) {
      return !allowed.empty() && std::find(allowed.begin(), allowed.end(), what) == allowed.end();
    };
    for (const auto* t : used) {
      if (forbidden(key->tiers, t->name)) {
        Refusal e;
        e.kind = RefusalKind::kForbidden;
        e.code = "tier_not_allowed_for_key";
        e.message = "virtual key " + key->id + " may not use tier '" + t->name +
                    "', which this request's plan needs; ask for a key that allows it";
        return e;
      }
    }
    const std::string data_class(route::to_string(decision.signals.sensitivity.data_class));
    if (forbidden(key->data_classes, data_class)) {
      Refusal e;
      e.kind = RefusalKind::kForbidden;
      e.code = "data_class_not_allowed_for_key";
      e.message = "virtual key " + key->id + " may not send data classed " + data_class;
      return e;
    }
    if (auto e = add_limits("vkey:" + key->id, key->limits, hold, admission)) return e;
    if (auto it = limits_.per_team.find(key->team);
        !key->team.empty() && it != limits_.per_team.end()) {
      if (auto e = add_limits("team:" + key->team, it->second, hold, admission)) return e;
    }
  } else if (auto e = add_limits("key:" + client, limits_.per_key, hold, admission)) {
    return e;
  }
  for (const auto* t : used) {
    auto it = limits_.per_tier.find(t->name);
    if (it == limits_.per_tier.end()) continue;
    if (auto e = add_limits("tier:" + t->name, it->second,
                            to_micro_usd(completion_cost_usd(*t, worst)), admission)) {
      return e;
    }
  }
  // Every limit in one step: admitted by all, or nothing is counted.
  const state::BatchAdmission a = state_->admit_all(admission.changes);
  if (!a.admitted) {
    const state::CounterChange& c = admission.changes[a.refused];
    const std::string& what = admission.what[a.refused];
    if (!c.key.starts_with("spend:")) return rate_limited(what);
    const size_t bar = what.rfind('|');
    Refusal e;
    e.kind = RefusalKind::kOverBudget;
    e.code = "budget_exceeded";
    e.message = what.substr(0, bar) + " has spent $" +
                std::to_string(static_cast<double>(a.refused_value) / 1e6) + " of its $" +
                what.substr(bar + 1) + " budget and this request could cost up to $" +
                std::to_string(static_cast<double>(c.amount) / 1e6) +
                "; raise the budget or lower max_tokens";
    return e;
  }
  for (const auto& c : admission.changes) {
    if (c.key.starts_with("spend:")) reservation.holds.emplace_back(c.key, c.amount);
    if (c.key.starts_with("tpm:")) reservation.token_counters.push_back(c.key);
  }
  // A team without a budget still has its spend counted.
  const bool team_budget = key != nullptr && limits_.per_team.contains(key->team) &&
                           limits_.per_team.at(key->team).budget_usd > 0;
  if (key != nullptr && !key->team.empty() && !team_budget) {
    reservation.spend_counters.push_back("spend:team:" + key->team);
  }
  return std::nullopt;
}

void SharedLimits::settle(const Reservation& reservation, double cost_usd, int64_t tokens) {
  const int64_t cost = to_micro_usd(cost_usd);
  std::vector<state::CounterChange> changes;
  for (const auto& [key, held] : reservation.holds) {
    if (cost != held) changes.push_back({key, cost - held, 0, std::chrono::milliseconds(0)});
  }
  if (tokens > 0) {
    for (const auto& key : reservation.token_counters) {
      changes.push_back({key, tokens, 0, kWindowTtl});
    }
  }
  if (cost > 0) {
    for (const auto& key : reservation.spend_counters) {
      changes.push_back({key, cost, 0, std::chrono::milliseconds(0)});
    }
  }
  state_->add_all(changes);  // one round trip
}

bool SharedLimits::breaker_open(const std::string& tier) {
  if (!shared()) return false;  // this process's own breakers are the executor's
  const auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard lock(mu_);
    if (auto it = breaker_cache_.find(tier);
        it != breaker_cache_.end() && it->second.second > now) {
      return it->second.first;
    }
  }
  const bool open = state_->flag("breaker:" + tier).has_value();
  std::lock_guard lock(mu_);
  breaker_cache_[tier] = {open, now + kBreakerCache};
  return open;
}

void SharedLimits::publish_breaker_open(const std::string& tier) {
  if (!shared()) return;
  state_->set_flag("breaker:" + tier, "open", breaker_open_, true);
  std::lock_guard lock(mu_);
  breaker_cache_[tier] = {true, std::chrono::steady_clock::now() + kBreakerCache};
}

void SharedLimits::record_shadow_verdict(bool agreed) {
  if (!shared()) return;
  state_->add_all({{"shadow:scored", 1, 0, std::chrono::milliseconds(0)},
                   {"shadow:agreed", agreed ? 1 : 0, 0, std::chrono::milliseconds(0)}});
}

std::optional<std::pair<int64_t, int64_t>> SharedLimits::shadow_agreement() {
  if (!shared()) return std::nullopt;
  return std::pair{state_->counter("shadow:scored"), state_->counter("shadow:agreed")};
}

void SharedLimits::publish_threshold(double threshold) {
  if (!shared()) return;
  state_->set_flag("shadow:threshold", std::to_string(threshold), std::chrono::hours(24 * 30),
                   false);
}

std::optional<double> SharedLimits::shared_threshold() {
  if (!shared()) return std::nullopt;
  const auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard lock(mu_);
    if (now < threshold_read_) return threshold_cache_;
  }
  std::optional<double> value;
  if (const auto text = state_->flag("shadow:threshold")) {
    double v = 0;
    const auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), v);
    if (ec == std::errc() && end == text->data() + text->size() && v >= 0 && v <= 1) value = v;
  }
  std::lock_guard lock(mu_);
  threshold_cache_ = value;
  threshold_read_ = now + std::chrono::seconds(1);
  return value;
}

std::optional<std::string> SharedLimits::pinned_tier(const std::string& session) {
  return state_->flag(pin_key(session));
}

void SharedLimits::pin(const std::string& session, const std::string& tier) {
  state_->set_flag(pin_key(session), tier, kPinTtl, false);
}

}  // namespace foreshore::hybrid
