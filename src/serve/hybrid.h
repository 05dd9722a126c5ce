// The hybrid path of the gateway: request hints -> router decision -> plan
// execution over the tiers, and what is recorded afterwards (metrics, audit
// row, model versions, shadow evaluation). The HTTP server stays a thin layer
// over this.
#pragma once

#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "backend/backend.h"
#include "exec/exec.h"
#include "observe/observe.h"
#include "route/router.h"
#include "serve/learning.h"
#include "serve/metrics.h"
#include "serve/openai.h"

namespace foreshore::serve {

struct HybridSettings {
  route::RouterConfig routing;
  std::string audit_path;    // empty: no audit store
  std::string decision_log;  // JSONL file of every decision (no raw text); empty: none
  bool audit_store_text = false;
  int64_t audit_max_rows = 0;
  int64_t audit_max_age_hours = 0;
  double shadow_fraction = 0.0;  // share of edge answers re-run on the cloud
  double shadow_rate_per_second = 1.0;
  std::vector<route::DataClass> shadow_data_classes{route::DataClass::kPublic};
  uint64_t memory_budget_bytes = 0;  // 0: no budget of our own; PSI/cgroup still count
  int32_t memory_pressure_interval_ms = 1000;
  // When > 0, shadow agreement steers the complexity threshold to stay at or
  // above this share of edge answers agreeing with the cloud's.
  double shadow_target_agreement = 0.0;
};

// Routing hints a client sends as headers (or in the body's metadata).
struct RouteHints {
  std::string data_class;                   // x-foreshore-data-class / metadata.data_class
  std::string latency_budget_ms;            // x-foreshore-latency-budget-ms
  std::string cost_ceiling_usd;             // x-foreshore-cost-ceiling-usd
  std::string forced_tier;                  // x-foreshore-tier
  std::string session;                      // x-foreshore-session or the body's `user`
  std::vector<std::string> fallback_tiers;  // the model alias's chain, with forced_tier
  // forced_tier came from a model alias or model id rather than the header
  // or the tier's own name: steps the data class forbids are dropped.
  bool forced_is_preference = false;
};

class HybridRouter {
 public:
  static Result<std::unique_ptr<HybridRouter>> create(
      const HybridSettings& settings, const std::vector<backend::TierConfig>& tiers,
      std::map<std::string, std::shared_ptr<backend::Backend>> backends, MetricsRegistry& metrics);
  ~HybridRouter();

  // The decision for a request; an ApiError for malformed hints or an unknown
  // policy name in `model` ("foreshore/<policy>").
  Result<route::Decision> decide(const ApiRequest& request, const RouteHints& hints,
                                 ApiError& error) const;
  // Runs the decided plan; streams through on_delta when set.
  Result<exec::ExecutionResult> execute(const route::Decision& decision,
                                        const backend::BackendRequest& request,
                                        const backend::DeltaSink& on_delta,
                                        const exec::SourceSink& on_source = {});
  // Records the outcome: metrics, audit row, versions, session pin, shadow job.
  void finish(const ApiRequest& request, const RouteHints& hints, const route::Decision& decision,
              const Result<exec::ExecutionResult>& result, double total_ms, int status);

  // Brings gauges that are read rather than pushed (breaker states, shadow
  // agreement, the adaptive threshold) up to date; called before /metrics renders.
  void collect_metrics();

  // The egress guard's policy (backend/egress_guard.h): empty when the
  // strings of a body may go to `tier`, else why not. Counts refusals.
  std::string egress_verdict(std::string_view tier,
                             std::span<const std::string_view> strings) const;

  // True when `model` is a name the router answers to ("foreshore", "foreshore/<policy>").
  static bool is_routed_model(std::string_view model);
  const route::Router& router() const { return *router_; }
  // The tier's circuit breaker as readiness reports it: closed, open, half-open.
  std::string_view breaker_state(const std::string& tier) const {
    return exec::to_string(executor_->breaker_state(tier));
  }
  // Online router learning (routing.learning); null when off.
  RouterLearning* learning() const { return learning_.get(); }
  const backend::TierConfig* tier_config(std::string_view name) const;

 private:
  void collect_edge_load(const std::string& tier, const backend::EdgeLoad& load);
  HybridRouter() = default;
  std::unique_ptr<route::Router> router_;
  std::unique_ptr<exec::Executor> executor_;
  std::unique_ptr<observe::AuditStore> audit_;
  std::unique_ptr<observe::MemoryPressureMonitor> memory_;
  std::unique_ptr<observe::VersionRegistry> versions_;
  std::unique_ptr<observe::ShadowSampler> shadow_;
  std::unique_ptr<RouterLearning> learning_;  // after shadow_: its verdicts feed it
  std::mutex decision_log_mu_;
  std::FILE* decision_log_ = nullptr;
  std::vector<backend::TierConfig> tiers_;
  MetricsRegistry* metrics_ = nullptr;
  Gauge* memory_level_ = nullptr;
  Counter* escalations_ = nullptr;
  Counter* degraded_ = nullptr;
  Counter* rejected_ = nullptr;
  Counter* egress_refused_ = nullptr;
};

// Dollars a completion cost on a tier at its configured prices.
double completion_cost_usd(const backend::TierConfig& tier, const backend::Usage& usage);

}  // namespace foreshore::serve
