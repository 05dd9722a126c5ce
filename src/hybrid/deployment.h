// One gateway configuration made live: its tiers, the names clients reach
// them by, and the pipeline over them; and the whole run of one request in
// process. The HTTP gateway (src/serve) swaps a new one in on reload; the C
// API (src/capi) holds one per handle.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "common/result.h"
#include "exec/exec.h"
#include "hybrid/config.h"
#include "hybrid/pipeline.h"
#include "hybrid/request.h"
#include "hybrid/stream.h"
#include "observe/metrics.h"
#include "route/router.h"

namespace foreshore::hybrid {

using BackendFactory =
    std::function<Result<std::shared_ptr<backend::Backend>>(const backend::TierConfig&)>;

struct Tier {
  backend::TierConfig config;
  std::shared_ptr<backend::Backend> backend;
};

// What one request ran to: an answer, or the refusal that says why not.
struct Answer {
  std::optional<route::Decision> decision;  // absent when refused before routing
  const Tier* tier = nullptr;               // the plan's first tier; the serving one when answered
  bool ran = false;  // the plan was executed (an answer, or the tiers' failure)
  std::optional<Refusal> refusal;
  std::optional<exec::ExecutionResult> result;
};

// The line server.log_requests writes for a request: its id, endpoint, tier
// ("-" when none), status, time and, for a routed request, the plan and why
// it was degraded.
std::string request_log_line(std::string_view id, RequestKind kind, std::string_view tier,
                             int status, double ms, std::string_view plan,
                             const exec::ExecutionResult* outcome);

class Deployment {
 public:
  // Builds everything `config` defines. Tiers whose configuration did not
  // change since `previous` keep their running backend (a loaded model is not
  // loaded twice). With `starting`, an embedded tier whose model fails to load
  // is kept as an unavailable tier so the others still serve; otherwise
  // (a reload) such a failure is the error. Cloud tiers check every body
  // against `egress`.
  static Result<std::unique_ptr<Deployment>> create(
      config::GatewayConfig config, const BackendFactory& factory, const Deployment* previous,
      bool starting, observe::MetricsRegistry& metrics,
      std::shared_ptr<const backend::EgressGuard> egress);

  const config::GatewayConfig& config() const { return config_; }
  const std::vector<Tier>& tiers() const { return tiers_; }
  // The tier named `name`; the default tier when there is none by that name.
  const Tier& tier(std::string_view name) const;
  size_t default_tier() const { return default_tier_; }
  // Every name a client may send as `model`: tier names, aliases, model ids.
  const std::unordered_map<std::string, size_t>& by_model() const { return by_model_; }
  Pipeline& pipeline() const { return *pipeline_; }

  // Where a request is forced, in `hints`: the tier the caller named
  // (`tier_hint`, x-foreshore-tier) or its `model` when that names a tier, an
  // alias (with its fallback chain) or a model id, still subject to the
  // router's rules (device-only data never reaches a cloud tier). A Refusal
  // when either names nothing this deployment serves.
  std::optional<Refusal> place(const Request& request, std::string_view tier_hint,
                               RouteHints& hints) const;

  // Places, decides and admits a request (shared limits and budgets): the
  // Answer holds the decision (under the id `id`) and the plan's first tier,
  // or the refusal. A decision that rejects the request is recorded here;
  // an admitted one is recorded by execute() or, for a stream the caller
  // runs itself, by the caller's pipeline().finish().
  Answer admit(const Request& request, RouteHints& hints, std::string_view tier_hint,
               const std::string& id) const;
  // Runs an admitted request's plan for a whole answer under the configured
  // request timeout from `start`, and records the outcome into `admitted`:
  // the result and the tier that served, or the refusal the tiers' failure
  // means.
  void execute(Request request, const RouteHints& hints, Answer& admitted,
               std::chrono::steady_clock::time_point start) const;
  // The decision for `request` explained and not run, as JSON: what POST
  // /v1/route answers with and foreshore_hybrid_route() returns. `tier_hint`
  // forces a tier as x-foreshore-tier does. The Refusal in `refusal` when it
  // cannot be decided (a malformed hint, an unknown policy, a rejecting plan).
  Result<std::string> explain_route(const Request& request, RouteHints hints,
                                    std::string_view tier_hint, Refusal& refusal) const;
  // Who `tier` is as a stream names it: its name, placement, model and
  // version ("unknown" when the tier does not say).
  StreamOrigin origin(std::string_view tier) const;
  // Runs an admitted request's plan streaming, on the calling thread, and
  // hands each event to `sink` (stream.h); `first_tier` is the admitted
  // answer's tier, which answers unless a fallback takes over. `request`
  // carries the id, deadline and cancellation flag; a set flag stops the run.
  // The caller records the outcome with pipeline().finish() once it knows how
  // the stream ended for its client.
  void stream(const route::Decision& decision, std::string_view first_tier,
              const backend::BackendRequest& request, StreamSink& sink) const;
  // One request's whole run, in process, on the calling thread: admit(), then
  // execute() or, with `on_delta`, stream() handing it each piece of text as
  // it comes (returning false cancels); the outcome is recorded either way.
  Answer run(Request request, RouteHints hints, std::string_view tier_hint, const std::string& id,
             const backend::DeltaSink& on_delta) const;

 private:
  Deployment() = default;
  // Records how an admitted request's run ended into `admitted` and the
  // pipeline (learning, budgets, audit): the result and the tier that served,
  // or the refusal the tiers' failure means.
  void settle(const Request& request, const RouteHints& hints, Answer& admitted,
              Result<exec::ExecutionResult> result,
              std::chrono::steady_clock::time_point start) const;
  config::GatewayConfig config_;
  std::vector<Tier> tiers_;
  std::unordered_map<std::string, size_t> by_model_;
  size_t default_tier_ = 0;
  std::unique_ptr<Pipeline> pipeline_;
};

}  // namespace foreshore::hybrid
