#include "hybrid/deployment.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <utility>

#include "route/sensitivity.h"

namespace foreshore::hybrid {
namespace {

constexpr std::string_view kRoutedModel = "foreshore";

double ms_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

Result<PipelineSettings> pipeline_settings(const config::GatewayConfig& c) {
  PipelineSettings s;
  s.routing = c.routing;
  s.audit_path = c.server.audit_db;
  s.decision_log = c.server.decision_log;
  s.decision_log_max_mb = c.server.decision_log_max_mb;
  s.audit_store_text = c.server.audit_store_text;
  s.audit_max_rows = c.server.audit_max_rows;
  s.audit_max_age_hours = c.server.audit_max_age_hours;
  s.shadow_fraction = c.server.shadow_fraction;
  s.shadow_target_agreement = c.server.shadow_target_agreement;
  s.state = c.state;
  s.audit_postgres = c.server.audit_postgres;
  s.audit_spool = c.server.audit_spool;
  s.limits = c.limits;
  s.shadow_data_classes.clear();
  for (const auto& name : c.server.shadow_data_classes) {
    if (auto cls = route::parse_data_class(name); cls.ok()) s.shadow_data_classes.push_back(*cls);
  }
  s.memory_budget_bytes = static_cast<uint64_t>(c.server.memory_budget_mb) << 20;
  s.memory_pressure_interval_ms = c.server.memory_pressure_interval_ms;
  return s;
}

}  // namespace

Result<std::unique_ptr<Deployment>> Deployment::create(
    config::GatewayConfig config, const BackendFactory& factory, const Deployment* previous,
    bool starting, observe::MetricsRegistry& metrics,
    std::shared_ptr<const backend::EgressGuard> egress) {
  std::unique_ptr<Deployment> dep(new Deployment());
  dep->config_ = std::move(config);
  const config::GatewayConfig& c = dep->config_;
  std::vector<Tier>& loaded = dep->tiers_;
  loaded.reserve(c.tiers.size());
  for (const auto& tc : c.tiers) {
    std::shared_ptr<backend::Backend> reused;
    if (previous != nullptr) {
      for (const auto& old : previous->tiers_) {
        if (old.config == tc) reused = old.backend;
      }
    }
    if (!reused) {
      auto b = factory(tc);
      if (b.ok()) (*b)->set_egress_guard(egress);
      if (b.ok()) {
        reused = std::move(b).value();
      } else if (starting && tc.kind() == backend::TierKind::kEmbedded && c.tiers.size() > 1) {
        std::fprintf(stderr,
                     "warning: tier '%s' is UNAVAILABLE: %s\n"
                     "  the other tiers serve; requests that may only run on it get 503\n",
                     tc.name.c_str(), b.error().message.c_str());
        reused = backend::make_unavailable_backend(tc, b.error());
      } else {
        Error e = b.error();
        e.message = c.source + ": tiers." + tc.name + ": " + e.message;
        return e;
      }
    }
    loaded.push_back(Tier{tc, std::move(reused)});
  }

  // Model ids first, so explicit names and aliases win over them; a model
  // id served by several tiers reaches the first (device tiers come first
  // in any sensible config).
  auto& by_model = dep->by_model_;
  for (size_t i = 0; i < loaded.size(); ++i) {
    by_model.emplace(loaded[i].config.model, i);
    if (!loaded[i].backend->info().model.empty()) {
      by_model.emplace(loaded[i].backend->info().model, i);
    }
  }
  for (const auto& alias : c.models) {
    for (size_t i = 0; i < loaded.size(); ++i) {
      if (loaded[i].config.name == alias.tier) by_model[alias.name] = i;
    }
  }
  for (size_t i = 0; i < loaded.size(); ++i) by_model[loaded[i].config.name] = i;

  const std::string& wanted = c.server.default_tier;
  auto pick = std::find_if(loaded.begin(), loaded.end(), [&](const Tier& t) {
    return wanted.empty() ? t.config.placement == backend::Placement::kDevice
                          : t.config.name == wanted;
  });
  if (pick != loaded.end()) dep->default_tier_ = static_cast<size_t>(pick - loaded.begin());

  FSH_ASSIGN_OR_RETURN(PipelineSettings settings, pipeline_settings(c));
  std::map<std::string, std::shared_ptr<backend::Backend>> backends;
  for (const auto& t : loaded) backends[t.config.name] = t.backend;
  auto pipeline = Pipeline::create(settings, c.tiers, std::move(backends), metrics,
                                   previous != nullptr ? previous->pipeline_.get() : nullptr);
  if (!pipeline.ok()) {
    Error e = pipeline.error();
    e.message = c.source + ": " + e.message;
    return e;
  }
  dep->pipeline_ = std::move(pipeline).value();
  return dep;
}

std::string request_log_line(std::string_view id, RequestKind kind, std::string_view tier,
                             int status, double ms, std::string_view plan,
                             const exec::ExecutionResult* outcome) {
  std::string extra;
  if (!plan.empty()) extra += " plan=" + std::string(plan);
  if (outcome != nullptr && outcome->degraded) {
    extra += " degraded=\"" + outcome->degraded_reason + "\"";
  }
  char line[512];
  std::snprintf(line, sizeof line, "req %.*s %s tier=%.*s status=%d %.1fms%s",
                static_cast<int>(id.size()), id.data(),
                kind == RequestKind::kChat ? "chat" : "completions", static_cast<int>(tier.size()),
                tier.data(), status, ms, extra.c_str());
  return line;
}

const Tier& Deployment::tier(std::string_view name) const {
  for (const auto& t : tiers_) {
    if (t.config.name == name) return t;
  }
  return tiers_[default_tier_];
}

std::optional<Refusal> Deployment::place(const Request& request, std::string_view tier_hint,
                                         RouteHints& hints) const {
  if (!tier_hint.empty()) {
    for (const auto& t : tiers_) {
      if (t.config.name == tier_hint) {
        hints.forced_tier = t.config.name;
        return std::nullopt;
      }
    }
    std::string names;
    for (const auto& t : tiers_) names += (names.empty() ? "" : ", ") + t.config.name;
    return invalid_request("x-foreshore-tier: '" + std::string(tier_hint) +
                               "' is not a tier of this gateway (tiers: " + names + ")",
                           "x-foreshore-tier", "unknown_tier");
  }
  if (Pipeline::is_routed_model(request.model)) {
    // Without a routing: section, server.default_tier is a fixed tier.
    if (!config_.routing_configured && !config_.server.default_tier.empty()) {
      hints.forced_tier = config_.server.default_tier;
    }
    return std::nullopt;
  }
  auto it = by_model_.find(request.model);
  if (it == by_model_.end()) {
    Refusal r = invalid_request("The model '" + request.model +
                                    "' does not exist on this gateway; GET /v1/models "
                                    "lists the names it serves",
                                "model", "model_not_found");
    r.kind = RefusalKind::kNotFound;
    return r;
  }
  hints.forced_tier = tiers_[it->second].config.name;
  hints.forced_is_preference = request.model != hints.forced_tier;
  for (const auto& alias : config_.models) {
    if (alias.name == request.model) hints.fallback_tiers = alias.fallback;
  }
  return std::nullopt;
}

Answer Deployment::admit(const Request& request, RouteHints& hints, std::string_view tier_hint,
                         const std::string& id) const {
  const auto start = std::chrono::steady_clock::now();
  Answer answer;
  if (auto refused = place(request, tier_hint, hints)) {
    answer.refusal = std::move(refused);
    return answer;
  }
  Refusal refusal;
  auto decided = pipeline_->decide(request, hints, refusal);
  if (!decided.ok()) {
    answer.refusal = std::move(refusal);
    return answer;
  }
  route::Decision& decision = answer.decision.emplace(std::move(decided).value());
  decision.id = id;
  if (decision.plan.kind == route::PlanKind::kReject) {
    pipeline_->finish(
        request, hints, decision,
        Result<exec::ExecutionResult>(make_error(ErrorKind::kUnavailable, refusal.message)),
        ms_since(start), recorded_status(refusal));
    answer.refusal = std::move(refusal);
    return answer;
  }
  answer.tier = &tier(decision.plan.kind == route::PlanKind::kCloud ? decision.plan.cloud_tier
                                                                    : decision.plan.edge_tier);
  answer.refusal = pipeline_->admit(request, decision, hints);
  return answer;
}

void Deployment::execute(Request request, const RouteHints& hints, Answer& admitted,
                         std::chrono::steady_clock::time_point start) const {
  const route::Decision& decision = *admitted.decision;
  request.stream = false;
  request.backend.request_id = decision.id;
  request.backend.deadline = start + std::chrono::milliseconds(config_.server.request_timeout_ms);
  request.backend.cancelled = std::make_shared<std::atomic<bool>>(false);
  settle(request, hints, admitted, pipeline_->execute(decision, request.backend, {}), start);
}

void Deployment::settle(const Request& request, const RouteHints& hints, Answer& admitted,
                        Result<exec::ExecutionResult> result,
                        std::chrono::steady_clock::time_point start) const {
  const route::Decision& decision = *admitted.decision;
  admitted.ran = true;
  if (!result.ok()) {
    admitted.refusal = refusal_from_error(result.error());
    pipeline_->finish(request, hints, decision, result, ms_since(start),
                      recorded_status(*admitted.refusal));
    return;
  }
  admitted.tier = &tier(result->tier);
  pipeline_->finish(request, hints, decision, result, ms_since(start), 200);
  admitted.result = std::move(result).value();
}

Result<std::string> Deployment::explain_route(const Request& request, RouteHints hints,
                                              std::string_view tier_hint, Refusal& refusal) const {
  // The model and tier are placed as admit() places them, so an explanation
  // is refused where the request would be (an unknown model: 404).
  if (auto refused = place(request, tier_hint, hints)) {
    refusal = std::move(*refused);
    return make_error(
        refusal.kind == RefusalKind::kNotFound ? ErrorKind::kNotFound : ErrorKind::kInvalidArgument,
        refusal.message);
  }
  auto decided = pipeline_->decide(request, hints, refusal);
  if (!decided.ok()) return decided.error();
  nlohmann::json j;
  route::to_json(j, *decided);
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
}

StreamOrigin Deployment::origin(std::string_view name) const {
  const Tier& t = tier(name);
  const backend::BackendInfo& info = t.backend->info();
  return StreamOrigin{std::string(name), std::string(backend::placement_name(t.config.placement)),
                      info.model, info.model_version.empty() ? "unknown" : info.model_version};
}

void Deployment::stream(const route::Decision& decision, std::string_view first_tier,
                        const backend::BackendRequest& request, StreamSink& sink) const {
  StreamOrigin current = origin(first_tier);
  bool started = false;
  auto result = pipeline_->execute(
      decision, request,
      [&](const backend::Delta& delta) {
        if (request.cancelled && request.cancelled->load(std::memory_order_relaxed)) return false;
        if (!started) {
          started = true;
          if (!sink.begin(current)) return false;
        }
        return sink.delta(delta);
      },
      [&](const std::string& source) {
        if (started || source == current.tier) return;
        current = origin(source);
        sink.source(current);
      });
  if (!result.ok()) {
    sink.fail(result.error(), started);
    return;
  }
  // The tier that served, under the model and version its completion reports.
  StreamOrigin served = std::move(current);
  served.tier = result->tier;
  served.placement = backend::placement_name(tier(result->tier).config.placement);
  const backend::Completion& completion = result->completion;
  if (!completion.model.empty()) served.model = completion.model;
  if (!completion.model_version.empty()) served.model_version = completion.model_version;
  sink.finish(std::move(result).value(), served);
}

namespace {

// A streamed run kept for the caller of run(): each piece goes on to its
// sink, and the end is kept for the Answer.
class PieceSink final : public StreamSink {
 public:
  explicit PieceSink(const backend::DeltaSink& on_delta) : on_delta_(on_delta) {}
  void source(const StreamOrigin&) override {}
  bool begin(const StreamOrigin&) override { return true; }
  bool delta(const backend::Delta& delta) override { return on_delta_(delta); }
  void finish(exec::ExecutionResult result, const StreamOrigin&) override {
    outcome = std::move(result);
  }
  void fail(const Error& error, bool) override { outcome = error; }

  Result<exec::ExecutionResult> outcome =
      make_error(ErrorKind::kInternal, "the streamed run ended without an outcome");

 private:
  const backend::DeltaSink& on_delta_;
};

}  // namespace

Answer Deployment::run(Request request, RouteHints hints, std::string_view tier_hint,
                       const std::string& id, const backend::DeltaSink& on_delta) const {
  const auto start = std::chrono::steady_clock::now();
  Answer answer = admit(request, hints, tier_hint, id);
  if (answer.refusal) return answer;
  if (!on_delta) {
    execute(std::move(request), hints, answer, start);
    return answer;
  }
  request.backend.request_id = id;
  request.backend.deadline = start + std::chrono::milliseconds(config_.server.request_timeout_ms);
  request.backend.cancelled = std::make_shared<std::atomic<bool>>(false);
  PieceSink sink(on_delta);
  stream(*answer.decision, answer.tier->config.name, request.backend, sink);
  settle(request, hints, answer, std::move(sink.outcome), start);
  return answer;
}

}  // namespace foreshore::hybrid
