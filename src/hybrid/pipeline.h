// The hybrid pipeline: request hints -> router decision -> admission against
// shared limits -> plan execution over the tiers, and what is recorded
// afterwards (metrics, audit row, model versions, shadow evaluation). It knows
// no transport: the HTTP gateway (src/serve) and the C API (src/capi) are
// front ends over it.
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
#include "hybrid/latency_sharing.h"
#include "hybrid/learning.h"
#include "hybrid/request.h"
#include "hybrid/shared_limits.h"
#include "hybrid/virtual_keys.h"
#include "observe/metrics.h"
#include "observe/observe.h"
#include "observe/pg_audit.h"
#include "route/router.h"
#include "state/state.h"

namespace foreshore::hybrid {

struct PipelineSettings {
  route::RouterConfig routing;
  std::string audit_path;      // empty: no audit store
  std::string audit_postgres;  // libpq connection string; empty: no PostgreSQL sink
  std::string audit_spool;     // where its records wait while PostgreSQL is down
  std::string decision_log;    // JSONL file of every decision (no raw text); empty: none
  bool audit_store_text = false;
  int64_t audit_max_rows = 0;
  double decision_log_max_mb = 0;  // rotate to PATH.1 past this; 0: no limit
  int64_t audit_max_age_hours = 0;
  double shadow_fraction = 0.0;  // share of edge answers re-run on the cloud
  double shadow_rate_per_second = 1.0;
  std::vector<route::DataClass> shadow_data_classes{route::DataClass::kPublic};
  uint64_t memory_budget_bytes = 0;  // 0: no budget of our own; PSI/cgroup still count
  int32_t memory_pressure_interval_ms = 1000;
  // When > 0, shadow agreement steers the complexity threshold to stay at or
  // above this share of edge answers agreeing with the cloud's.
  double shadow_target_agreement = 0.0;
  state::StateSettings state;  // where replicas share limits, breakers and pins
  LimitsConfig limits;
};

// Routing hints a client sends as headers (or in the body's metadata).
struct RouteHints {
  // Both may be given; the stricter holds, so neither can loosen the other.
  std::string data_class;                   // x-foreshore-data-class
  std::string body_data_class;              // metadata.data_class
  std::string latency_budget_ms;            // x-foreshore-latency-budget-ms
  std::string cost_ceiling_usd;             // x-foreshore-cost-ceiling-usd
  std::string forced_tier;                  // x-foreshore-tier
  std::string session;                      // x-foreshore-session or the body's `user`
  std::vector<std::string> fallback_tiers;  // the model alias's chain, with forced_tier
  // forced_tier came from a model alias or model id rather than the header
  // or the tier's own name: steps the data class forbids are dropped.
  bool forced_is_preference = false;
  std::string client;                     // client_identity() of the request's key
  Reservation reservation;                // what Pipeline::admit held back, settled by finish
  std::optional<VirtualKey> virtual_key;  // the virtual key the request came with
};

class Pipeline {
 public:
  // `previous`: the pipeline this one replaces (a config reload), whose
  // learning router goes on in this one when its settings are unchanged.
  static Result<std::unique_ptr<Pipeline>> create(
      const PipelineSettings& settings, const std::vector<backend::TierConfig>& tiers,
      std::map<std::string, std::shared_ptr<backend::Backend>> backends,
      observe::MetricsRegistry& metrics, const Pipeline* previous = nullptr);
  ~Pipeline();

  // The decision for a request; a Refusal in `error` for malformed hints or an
  // unknown policy name in `model` ("foreshore/<policy>"), and for a decision
  // that rejects the request (plan kind kReject).
  Result<route::Decision> decide(const Request& request, const RouteHints& hints,
                                 Refusal& error) const;
  // Counts the request against the shared limits and budgets (shared_limits.h)
  // and holds back its worst-case cost in hints.reservation; the error to
  // answer with when refused. finish() settles the hold.
  std::optional<Refusal> admit(const Request& request, const route::Decision& decision,
                               RouteHints& hints);
  // Runs the decided plan; streams through on_delta when set.
  Result<exec::ExecutionResult> execute(const route::Decision& decision,
                                        const backend::BackendRequest& request,
                                        const backend::DeltaSink& on_delta,
                                        const exec::SourceSink& on_source = {});
  // Records the outcome: metrics, audit row, versions, session pin, shadow job.
  // `status`: the status the front end answered with, in HTTP's numbers as the
  // audit row and decision log keep them (499: the caller went away).
  void finish(const Request& request, const RouteHints& hints, const route::Decision& decision,
              const Result<exec::ExecutionResult>& result, double total_ms, int status);

  // Brings gauges that are read rather than pushed (breaker states, shadow
  // agreement, the adaptive threshold) up to date; called before /metrics renders.
  void collect_metrics();

  // The egress guard's policy (backend/egress_guard.h): empty when the
  // strings of a body may go to `tier`, else why not. Counts refusals.
  std::string egress_verdict(std::string_view tier, std::span<const std::string_view> strings,
                             const backend::EgressClearance* skipped) const;

  // What `decision`'s scan read of `request` (message contents, prompt), for
  // the egress guard to skip: the same bytes need not be scanned twice.
  std::shared_ptr<const backend::EgressClearance> egress_clearance(
      const route::Decision& decision, const backend::BackendRequest& request) const;

  // True when `model` is a name the router answers to ("foreshore", "foreshore/<policy>").
  static bool is_routed_model(std::string_view model);
  const route::Router& router() const { return *router_; }
  // The tier's circuit breaker as readiness reports it: closed, open, half-open.
  std::string_view breaker_state(const std::string& tier) const {
    return exec::to_string(executor_->breaker_state(tier));
  }
  // An embedding app's own memory-pressure level (0 none .. 3 critical)
  // replaces the measured one until reset with nullopt; applied at once.
  void set_memory_pressure_level(std::optional<int> level);

  // Online router learning (routing.learning); null when off.
  RouterLearning* learning() const { return learning_.get(); }
  const backend::TierConfig* tier_config(std::string_view name) const;
  // The state backend as /readyz and /metrics report it, and where virtual
  // keys (virtual_keys.h) are made, found and revoked.
  const state::SharedState& shared_state() const { return shared_->state(); }
  state::SharedState& shared_state() { return shared_->state(); }

 private:
  void collect_edge_load(const std::string& tier, const backend::EdgeLoad& load);
  Pipeline() = default;
  std::unique_ptr<route::Router> router_;
  std::unique_ptr<exec::Executor> executor_;
  std::unique_ptr<observe::AuditStore> audit_;
  std::unique_ptr<observe::PgAuditSink> pg_audit_;
  std::unique_ptr<observe::MemoryPressureMonitor> memory_;
  std::unique_ptr<observe::VersionRegistry> versions_;
  std::unique_ptr<exec::ShadowSampler> shadow_;
  // After shadow_: its verdicts feed it. Shared with the pipeline a reload
  // replaces, which may still finish requests that teach it.
  std::shared_ptr<RouterLearning> learning_;
  std::unique_ptr<SharedLimits> shared_;
  // Pools learned latencies with the other replicas (state shared only);
  // after shared_ and router_, so it stops before either goes.
  std::unique_ptr<LatencySharing> latency_sharing_;
  // The shadow-adapted threshold is shared (state.backend redis, adaptive on).
  bool adopt_shared_threshold_ = false;
  std::mutex decision_log_mu_;
  std::FILE* decision_log_ = nullptr;
  std::string decision_log_path_;
  int64_t decision_log_bytes_ = 0;
  int64_t decision_log_max_bytes_ = 0;  // 0: no limit
  std::vector<backend::TierConfig> tiers_;
  observe::MetricsRegistry* metrics_ = nullptr;
  observe::Gauge* memory_level_ = nullptr;
  observe::Counter* escalations_ = nullptr;
  observe::Counter* degraded_ = nullptr;
  observe::Counter* rejected_ = nullptr;
  observe::Counter* egress_refused_ = nullptr;
};

// Dollars a completion cost on a tier at its configured prices.
double completion_cost_usd(const backend::TierConfig& tier, const backend::Usage& usage);

}  // namespace foreshore::hybrid
