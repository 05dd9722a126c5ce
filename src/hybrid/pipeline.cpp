#include "hybrid/pipeline.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <deque>
#include <nlohmann/json.hpp>

namespace foreshore::hybrid {
namespace {

constexpr std::string_view kRoutedModel = "foreshore";

std::optional<double> parse_number(std::string_view text) {
  double v = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || ptr != text.data() + text.size()) return std::nullopt;
  return v;
}

std::string outcome_of(const Result<exec::ExecutionResult>& r) {
  if (!r.ok()) return "error:" + std::to_string(static_cast<int>(r.error().kind));
  if (r->degraded) return "degraded";
  if (r->escalated) return "escalated";
  if (r->fell_back) return "fallback";
  return "ok";
}

// The request field behind a feature the edge lacks (openai.cpp names them),
// so that SDKs show which parameter to change.
std::string edge_unsupported_param(std::string_view feature) {
  if (feature == "n > 1") return "n";
  if (feature == "tools") return "tools";
  if (feature.starts_with("response_format")) return "response_format";
  return "messages";
}

}  // namespace

bool Pipeline::is_routed_model(std::string_view model) {
  return model.empty() || model == kRoutedModel ||
         (model.starts_with(kRoutedModel) && model.size() > kRoutedModel.size() &&
          model[kRoutedModel.size()] == '/');
}

Result<std::unique_ptr<Pipeline>> Pipeline::create(
    const PipelineSettings& settings, const std::vector<backend::TierConfig>& tiers,
    std::map<std::string, std::shared_ptr<backend::Backend>> backends,
    observe::MetricsRegistry& metrics, const Pipeline* previous) {
  std::unique_ptr<Pipeline> h(new Pipeline());
  h->tiers_ = tiers;
  h->metrics_ = &metrics;
  std::vector<route::TierProfile> profiles;
  for (const auto& t : tiers) {
    auto it = backends.find(t.name);
    profiles.push_back(
        exec::tier_profile(t, it != backends.end() ? it->second->info().context_length : 0));
  }
  auto router = route::Router::create(settings.routing, std::move(profiles));
  if (!router.ok()) return router.error();
  h->router_ = std::move(router).value();
  h->executor_ =
      std::make_unique<exec::Executor>(backends, exec::ExecutorSettings{}, h->router_.get());
  auto state = state::SharedState::create(settings.state);
  if (!state.ok()) return state.error();
  h->shared_ = std::make_unique<SharedLimits>(
      std::move(state).value(), settings.state.budgets_fail_open, settings.limits,
      std::chrono::milliseconds(exec::ExecutorSettings{}.breaker.open_ms));
  if (h->shared_->shared()) {
    h->latency_sharing_ = std::make_unique<LatencySharing>(*h->router_, h->shared_->state());
  }

  if (!settings.audit_path.empty()) {
    observe::AuditOptions a;
    a.path = settings.audit_path;
    a.store_text = settings.audit_store_text;
    a.max_rows = settings.audit_max_rows;
    a.max_age = std::chrono::hours(settings.audit_max_age_hours);
    a.on_error = [](const std::string& m) { std::fprintf(stderr, "audit: %s\n", m.c_str()); };
    auto store = observe::AuditStore::open(std::move(a));
    if (!store.ok()) return store.error();
    h->audit_ = std::move(store).value();
  }

  if (!settings.audit_postgres.empty()) {
    observe::PgAuditOptions p;
    p.conninfo = settings.audit_postgres;
    p.spool_path = settings.audit_spool;
    p.store_text = settings.audit_store_text;
    p.on_error = [](const std::string& m) { std::fprintf(stderr, "audit: %s\n", m.c_str()); };
    auto sink = observe::PgAuditSink::open(std::move(p));
    if (!sink.ok()) return sink.error();
    h->pg_audit_ = std::move(sink).value();
  }

  if (!settings.decision_log.empty()) {
    h->decision_log_ = std::fopen(settings.decision_log.c_str(), "a");
    if (h->decision_log_ == nullptr) {
      return make_error(ErrorKind::kIo, "cannot open the decision log '" + settings.decision_log +
                                            "' for appending; check the folder exists and is "
                                            "writable");
    }
    h->decision_log_path_ = settings.decision_log;
    h->decision_log_bytes_ = std::ftell(h->decision_log_);
    h->decision_log_max_bytes_ =
        static_cast<int64_t>(settings.decision_log_max_mb * 1024 * 1024);
  }

  observe::MemoryPressureOptions m;
  m.budget_bytes = settings.memory_budget_bytes;
  m.interval = std::chrono::milliseconds(settings.memory_pressure_interval_ms);
  observe::apply_memory_pressure_env(m);
  if (auto s = observe::MemoryPressureMonitor::validate(m); !s.ok()) return s.error();
  h->memory_ = std::make_unique<observe::MemoryPressureMonitor>(std::move(m));
  h->memory_level_ =
      &metrics.gauge("foreshore_memory_pressure_level",
                     "Device memory pressure: 0 none, 1 some, 2 high, 3 critical.", {}, {});
  observe::Gauge* level = h->memory_level_;
  // Routing reacts through the level signal; the device tiers themselves
  // give memory back (and take it again) through adapt_to_memory_pressure.
  h->memory_->set_on_change([level, backends](int, const observe::MemorySample& s) {
    level->set(s.level);
    std::fprintf(stderr, "memory pressure now %s (%s)\n",
                 std::string(observe::memory_pressure_level_name(s.level)).c_str(),
                 s.driver.c_str());
    for (const auto& [name, b] : backends) {
      if (std::string change = b->adapt_to_memory_pressure(s.level); !change.empty()) {
        std::fprintf(stderr, "%s\n", change.c_str());
      }
    }
  });
  // Tiers kept across a config reload may still be adapted to a level this
  // new monitor would never report as a change: tell them where it stands now.
  const int level_now = h->memory_->sample_now().level;
  h->memory_level_->set(level_now);
  for (const auto& [name, b] : backends) {
    if (std::string change = b->adapt_to_memory_pressure(level_now); !change.empty()) {
      std::fprintf(stderr, "%s\n", change.c_str());
    }
  }
  h->memory_->start();

  h->versions_ = std::make_unique<observe::VersionRegistry>();
  observe::Counter* version_changes = &metrics.counter(
      "foreshore_model_version_changes_total", "Model version changes seen per tier.", {}, {});
  h->versions_->set_on_change([version_changes](const observe::VersionChange& c) {
    version_changes->add();
    std::fprintf(stderr, "tier %s changed model version %s -> %s\n", c.tier.c_str(),
                 c.old_version.c_str(), c.new_version.c_str());
  });
  for (const auto& [name, b] : backends) {
    h->versions_->register_tier(name, b->info().model, b->info().model_version);
  }

  // A reload keeps what was learned and the decisions awaiting feedback: the
  // same learner goes on when nothing it depends on changed; otherwise the
  // old one saves before the new one loads the file.
  std::shared_ptr<RouterLearning> kept = previous != nullptr ? previous->learning_ : nullptr;
  if (kept && (!settings.routing.learning.enabled || kept->config() != settings.routing.learning ||
               previous->router_->config().complexity_model != settings.routing.complexity_model)) {
    if (auto s = kept->retire(); !s.ok()) {
      std::fprintf(stderr, "router learning: %s\n", s.error().message.c_str());
    }
    kept.reset();
  }
  if (kept) {
    kept->attach(*h->router_);
    h->learning_ = std::move(kept);
  } else if (settings.routing.learning.enabled) {
    auto learning = RouterLearning::create(settings.routing.learning, *h->router_, metrics);
    if (!learning.ok()) return learning.error();
    h->learning_ = std::move(learning).value();
  }
  const std::string cloud = h->router_->config().cloud_tier;
  if (settings.shadow_fraction > 0.0 && !cloud.empty()) {
    exec::ShadowOptions o;
    o.fraction = settings.shadow_fraction;
    o.rate_per_second = settings.shadow_rate_per_second;
    o.data_classes = settings.shadow_data_classes;
    if (settings.shadow_target_agreement > 0.0) {
      exec::AdaptiveThresholdOptions adaptive;
      adaptive.target_agreement = settings.shadow_target_agreement;
      adaptive.initial = h->router_->threshold();
      o.adaptive = adaptive;
      route::Router* router = h->router_.get();
      // Replicas sharing state take the threshold the last one moved to.
      SharedLimits* shared = h->shared_.get();
      h->adopt_shared_threshold_ = shared->shared();
      o.on_threshold = [router, shared](double agreement, double threshold) {
        router->set_threshold(threshold);
        shared->publish_threshold(threshold);
        std::fprintf(stderr, "shadow agreement %.2f: complexity threshold now %.2f\n", agreement,
                     threshold);
      };
    }
    // Verdicts teach the router (when it learns) and add to the agreement
    // every replica sharing state counts together.
    o.on_verdict = [learning = h->learning_.get(), shared = h->shared_.get()](
                       const std::string& decision_id, bool agreed) {
      if (learning != nullptr) learning->shadow_verdict(decision_id, agreed);
      shared->record_shadow_verdict(agreed);
    };
    if (auto s = exec::ShadowSampler::validate(o); !s.ok()) return s.error();
    auto cloud_backend = h->executor_->backend(cloud);
    h->shadow_ = std::make_unique<exec::ShadowSampler>(
        std::move(o), [cloud_backend](const exec::ShadowJob& job) -> Result<exec::ShadowAnswer> {
          // The sampler refuses device-only jobs before they reach this point.
          backend::BackendRequest r;
          r.request_id = job.request_id + "-shadow";
          r.messages = job.messages;
          r.prompt = job.prompt;
          r.params = job.params;
          r.cancelled = job.cancelled;
          auto c = cloud_backend->generate(r, {});
          if (!c.ok()) return c.error();
          return exec::ShadowAnswer{c->text, c->model_version};
        });
    if (previous != nullptr && previous->shadow_) h->shadow_->carry_over(*previous->shadow_);
  }
  h->escalations_ = &metrics.counter("foreshore_escalations_total",
                                     "Cascade escalations from the edge to the cloud.", {}, {});
  h->degraded_ = &metrics.counter("foreshore_degraded_total",
                                  "Answers served degraded (fallback of last resort).", {}, {});
  h->rejected_ = &metrics.counter("foreshore_rejected_total",
                                  "Requests no tier could be allowed to serve.", {}, {});
  h->egress_refused_ = &metrics.counter(
      "foreshore_egress_refused_total",
      "Bodies the egress guard kept from a cloud tier (the router's plan allowed the cloud).", {},
      {});
  return h;
}

std::optional<Refusal> Pipeline::admit(const Request& request, const route::Decision& decision,
                                       RouteHints& hints) {
  return shared_->admit(hints.client, hints.virtual_key ? &*hints.virtual_key : nullptr, decision,
                        request, tiers_, hints.reservation);
}

double completion_cost_usd(const backend::TierConfig& tier, const backend::Usage& usage) {
  return (tier.price_input_per_mtok * usage.prompt_tokens +
          tier.price_output_per_mtok * usage.completion_tokens) /
         1e6;
}

void Pipeline::set_memory_pressure_level(std::optional<int> level) {
  memory_->set_simulated_level(level);
  memory_level_->set(memory_->sample_now().level);
}

// The embedded engine's continuous batching: what runs, what waits, what a
// step costs. Cumulative figures are gauges, read from the tier at scrape time.
void Pipeline::collect_edge_load(const std::string& tier, const backend::EdgeLoad& l) {
  const std::vector<std::string> label = {tier};
  const auto set = [&](const char* name, const char* help, double value) {
    metrics_->gauge(name, help, {"tier"}, label).set(value);
  };
  set("foreshore_edge_running_sequences",
      "Requests holding a KV slot on the embedded engine (generating or streaming).", l.running);
  set("foreshore_edge_queued_sequences", "Requests waiting for a KV slot on the embedded engine.",
      l.queued);
  set("foreshore_edge_queued_prompt_tokens", "Prompt tokens of the requests waiting for a slot.",
      static_cast<double>(l.queued_prompt_tokens));
  set("foreshore_edge_kv_slots_used", "KV cache slots held by requests.", l.running);
  set("foreshore_edge_kv_slots_free", "KV cache slots free for new requests.",
      std::max(0, l.slots - l.running));
  set("foreshore_edge_kv_blocks_used",
      "KV cache pool blocks held by running requests and kept prefixes.",
      static_cast<double>(l.kv_blocks_used));
  set("foreshore_edge_kv_blocks_free", "KV cache pool blocks free (kv_memory_mb).",
      static_cast<double>(l.kv_blocks_total - l.kv_blocks_used));
  set("foreshore_edge_kv_block_tokens", "Positions one KV cache pool block holds.",
      l.kv_block_tokens);
  set("foreshore_edge_kv_prefix_evictions",
      "Kept conversation prefixes given back to the KV pool for a new request, since start.",
      static_cast<double>(l.kv_prefix_evictions));
  set("foreshore_edge_kv_waits", "Requests that waited for KV memory before starting, since start.",
      static_cast<double>(l.kv_waits));
  set("foreshore_edge_admitted", "Requests the embedded engine has started, since start.",
      static_cast<double>(l.admitted));
  set("foreshore_edge_prefix_cache_hits",
      "Started requests that reused a cached prompt prefix (KV slot reuse), since start.",
      static_cast<double>(l.prefix_hits));
  set("foreshore_edge_steps", "Batched forward steps of the embedded engine, since start.",
      static_cast<double>(l.steps));
  set("foreshore_edge_step_seconds_sum", "Time spent in batched forward steps, since start.",
      l.step_ms_total / 1000.0);
  set("foreshore_edge_tokens",
      "Prompt and generated tokens run by the embedded engine, since start.",
      static_cast<double>(l.tokens_total));
  set("foreshore_edge_decode_step_seconds",
      "Recent time of a decode step (every running sequence's next token), 0 before the first.",
      l.decode_step_ms / 1000.0);
  set("foreshore_edge_decode_batch", "Sequences in the last decode step.", l.decode_batch);
  if (l.decode_step_ms > 0.0) {
    set("foreshore_edge_tokens_per_second",
        "Recent aggregate decode rate: sequences per decode step over its time.",
        l.decode_batch / (l.decode_step_ms / 1000.0));
  }
  for (size_t i = 0; i < backend::EdgeLoad::kStepBuckets.size(); ++i) {
    char bound[32];
    std::snprintf(bound, sizeof bound, "%g", backend::EdgeLoad::kStepBuckets[i]);
    metrics_
        ->gauge("foreshore_edge_steps_within_ms",
                "Batched forward steps that took at most le_ms milliseconds (cumulative), since "
                "start.",
                {"tier", "le_ms"}, {tier, bound})
        .set(static_cast<double>(l.step_buckets[i]));
  }
}

void Pipeline::collect_metrics() {
  for (const auto& t : tiers_) {
    metrics_
        ->gauge("foreshore_breaker_state",
                "Circuit breaker per tier: 0 closed (healthy), 1 open (failing, skipped), 2 "
                "half-open (probing).",
                {"tier"}, {t.name})
        .set(static_cast<double>(executor_->breaker_state(t.name)));
    if (auto b = executor_->backend(t.name); b && t.placement == backend::Placement::kCloud) {
      metrics_
          ->gauge("foreshore_pool_wait_timeouts",
                  "Requests that gave up waiting for a pooled connection to a cloud tier (answered "
                  "503 with Retry-After), since start.",
                  {"tier"}, {t.name})
          .set(static_cast<double>(b->pool_wait_timeouts()));
    }
    if (auto b = executor_->backend(t.name)) {
      if (const auto load = b->load()) collect_edge_load(t.name, *load);
    }
  }
  metrics_
      ->gauge("foreshore_complexity_threshold",
              "Complexity threshold in force (moves when shadow agreement adapts it).", {}, {})
      .set(router_->threshold());
  if (learning_) learning_->collect_metrics();
  if (pg_audit_) {
    metrics_
        ->gauge("foreshore_audit_postgres_up",
                "1 while the PostgreSQL audit sink is connected; 0 while records spool locally.",
                {}, {})
        .set(pg_audit_->connected() ? 1.0 : 0.0);
    metrics_
        ->gauge("foreshore_audit_spooled_rows",
                "Audit rows that went to the local spool file while PostgreSQL was down, since "
                "start (replayed once it is back).",
                {}, {})
        .set(static_cast<double>(pg_audit_->spooled()));
  }
  metrics_
      ->gauge("foreshore_state_backend_up",
              "1 while the state backend replicas share (state.backend) answers; 0 while this "
              "replica runs on its own copy.",
              {"backend"}, {std::string(shared_->state().backend())})
      .set(shared_->state().connected() ? 1.0 : 0.0);
  metrics_
      ->gauge("foreshore_state_local_fallbacks",
              "State operations answered from this replica's own copy because the shared "
              "backend was down, since start.",
              {}, {})
      .set(static_cast<double>(shared_->state().local_fallbacks()));
  if (!shadow_) return;
  if (const auto all = shared_->shadow_agreement()) {
    metrics_
        ->gauge("foreshore_shadow_scored_all_replicas",
                "Edge answers shadow-scored by every replica sharing state.", {}, {})
        .set(static_cast<double>(all->first));
    metrics_
        ->gauge("foreshore_shadow_agreement_ratio_all_replicas",
                "Share of them that agreed with the cloud's, over every replica sharing state.", {},
                {})
        .set(all->first > 0 ? static_cast<double>(all->second) / static_cast<double>(all->first)
                            : 0.0);
  }
  const exec::ShadowCounters c = shadow_->counters();
  const char* help = "Shadow evaluation jobs by what happened to them.";
  for (const auto& [what, n] :
       {std::pair{"offered", c.offered}, std::pair{"accepted", c.accepted},
        std::pair{"completed", c.completed}, std::pair{"failed", c.failed},
        std::pair{"dropped", c.dropped}, std::pair{"rate_limited", c.rate_limited},
        std::pair{"refused_device_only", c.refused_device_only}}) {
    metrics_->gauge("foreshore_shadow_jobs", help, {"outcome"}, {what}).set(static_cast<double>(n));
  }
  for (const auto& a : shadow_->agreement()) {
    const std::vector<std::string> labels = {a.edge_model_version, a.cloud_model_version};
    metrics_
        ->gauge("foreshore_shadow_agreement_ratio",
                "Share of shadow-scored edge answers that agree with the cloud's, per "
                "(edge, cloud) model version.",
                {"edge_version", "cloud_version"}, labels)
        .set(a.agreement_rate());
    metrics_
        ->gauge("foreshore_shadow_scored", "Edge answers scored against the cloud's.",
                {"edge_version", "cloud_version"}, labels)
        .set(static_cast<double>(a.jobs));
  }
}

Pipeline::~Pipeline() {
  if (shadow_) shadow_->stop();
  if (memory_) memory_->stop();
  if (decision_log_ != nullptr) std::fclose(decision_log_);
}

const backend::TierConfig* Pipeline::tier_config(std::string_view name) const {
  for (const auto& t : tiers_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

std::string Pipeline::egress_verdict(std::string_view tier,
                                     std::span<const std::string_view> strings,
                                     const backend::EgressClearance* skipped) const {
  const backend::TierConfig* config = tier_config(tier);
  if (config == nullptr) return "tier '" + std::string(tier) + "' is not in the live configuration";
  const route::DataClass allowed = exec::tier_profile(*config, 0).max_data_class;
  route::SensitivityResult found;
  if (skipped != nullptr && skipped->scanner != &router_->sensitivity()) {
    // The privacy configuration was reloaded while the request was in
    // flight: what routing vouched for was read by other detectors, so the
    // texts it vouched for are read again, with these.
    std::vector<std::string_view> all(strings.begin(), strings.end());
    all.insert(all.end(), skipped->texts.begin(), skipped->texts.end());
    found = router_->sensitivity().scan(all);
  } else {
    found = router_->sensitivity().scan(strings);
  }
  if (skipped != nullptr && skipped->scanner == &router_->sensitivity()) {
    const auto vouched = static_cast<route::DataClass>(skipped->rank);
    if (vouched > found.data_class) {
      found.data_class = vouched;
      found.rule = "the request's messages, as routing scanned them";
    }
  }
  if (found.data_class <= allowed) return {};
  egress_refused_->add();
  return "the body holds data classed " + std::string(route::to_string(found.data_class)) + " (" +
         found.rule + ") and tier '" + std::string(tier) + "' may receive at most " +
         std::string(route::to_string(allowed));
}

std::shared_ptr<const backend::EgressClearance> Pipeline::egress_clearance(
    const route::Decision& decision, const backend::BackendRequest& request) const {
  auto cleared = std::make_shared<backend::EgressClearance>();
  for (const auto& m : request.messages) {
    if (!m.content.empty()) cleared->texts.push_back(m.content);
  }
  if (request.prompt && !request.prompt->empty()) cleared->texts.push_back(*request.prompt);
  cleared->rank = static_cast<int32_t>(decision.signals.sensitivity.detected);
  cleared->scanner = &router_->sensitivity();
  return cleared;
}

Result<route::Decision> Pipeline::decide(const Request& api, const RouteHints& hints,
                                         Refusal& error) const {
  auto fail = [&](std::string message, std::string param) -> Error {
    error = invalid_request(std::move(message), std::move(param), "invalid_routing_hint");
    return make_error(ErrorKind::kInvalidArgument, error.message);
  };
  if (adopt_shared_threshold_) {
    if (const auto shared = shared_->shared_threshold();
        shared && *shared != router_->threshold()) {
      router_->set_threshold(*shared);
    }
  }
  route::RouteInput in;
  for (const auto& [declared, where] : {std::pair{&hints.data_class, "x-foreshore-data-class"},
                                        std::pair{&hints.body_data_class, "metadata.data_class"}}) {
    if (declared->empty()) continue;
    auto c = route::parse_data_class(*declared);
    if (!c.ok()) return fail(std::string(where) + ": " + c.error().message, where);
    in.declared_class = in.declared_class ? route::stricter(*in.declared_class, *c) : *c;
  }
  if (!hints.latency_budget_ms.empty()) {
    auto v = parse_number(hints.latency_budget_ms);
    if (!v || *v <= 0) {
      return fail("x-foreshore-latency-budget-ms must be a positive number of milliseconds, got '" +
                      hints.latency_budget_ms + "'",
                  "x-foreshore-latency-budget-ms");
    }
    in.latency_budget_ms = *v;
  }
  if (!hints.cost_ceiling_usd.empty()) {
    auto v = parse_number(hints.cost_ceiling_usd);
    if (!v || *v < 0) {
      return fail("x-foreshore-cost-ceiling-usd must be a non-negative number of dollars, got '" +
                      hints.cost_ceiling_usd + "'",
                  "x-foreshore-cost-ceiling-usd");
    }
    in.cost_ceiling_usd = *v;
  }
  if (api.model.size() > kRoutedModel.size() && api.model.starts_with(kRoutedModel)) {
    const std::string_view name = std::string_view(api.model).substr(kRoutedModel.size() + 1);
    in.policy = route::parse_policy(name);
    if (!in.policy) {
      error = invalid_request("The model '" + api.model +
                                  "' names no routing policy; use foreshore/threshold, "
                                  "foreshore/cascade, foreshore/consistency, "
                                  "foreshore/optimize, foreshore/edge or foreshore/cloud",
                              "model", "model_not_found");
      error.kind = RefusalKind::kNotFound;
      return make_error(ErrorKind::kNotFound, error.message);
    }
  }
  if (!hints.forced_tier.empty()) {
    in.forced_tier = hints.forced_tier;
    in.fallback_tiers = hints.fallback_tiers;
    in.forced_is_preference = hints.forced_is_preference;
  } else if (!hints.session.empty()) {
    // A conversation stays on the tier it started on, while that tier is healthy.
    // A turn that needs what the pinned device tier cannot do goes unpinned.
    // Replicas sharing state share pins: the turn may have started on another.
    std::optional<std::string> pinned;
    if (shared_->shared()) {
      pinned = shared_->pinned_tier(hints.session);
    } else if (auto pin = versions_->pin(hints.session)) {
      pinned = pin->tier;
    }
    if (pinned && executor_->available(*pinned) && !shared_->breaker_open(*pinned)) {
      const auto b = executor_->backend(*pinned);
      const bool on_device = b && b->info().placement == backend::Placement::kDevice;
      if (!(on_device && !api.backend.remote_only.edge_unsupported.empty())) {
        in.forced_tier = *pinned;
        in.forced_is_preference = true;
      }
    }
  }
  // Everything that would reach a cloud tier is scanned: tool definitions,
  // the arguments of earlier tool calls, content parts of every type, names,
  // stop strings and the fields passed through, as well as the messages.
  // JSON is read as the cloud would read it (unescaped, "key: value"), not
  // as its escaped text. The last message's content stays last, where the
  // complexity signal reads it.
  std::vector<std::string_view> texts;
  std::deque<std::string> arenas;  // views into these stay valid as it grows
  const auto add_json = [&](const backend::PassThroughJson& passed) {
    const std::string& blob = passed.text();
    if (blob.empty()) return;
    std::string why;
    if (!backend::collect_json_strings(blob, backend::EgressLimits{}.max_depth,
                                       arenas.emplace_back(), texts, why)) {
      texts.push_back(blob);  // the parser already bounded it; scan it as text
    }
  };
  const backend::RemoteOnlyFields& remote_only = api.backend.remote_only;
  add_json(remote_only.tools);
  add_json(remote_only.tool_choice);
  add_json(remote_only.response_format);
  add_json(remote_only.other);
  for (const auto& stop : api.backend.params.stop) texts.push_back(stop);
  for (const auto& m : api.backend.messages) {
    add_json(m.tool_calls);
    add_json(m.content_parts);
    if (!m.name.empty()) texts.push_back(m.name);
    if (!m.tool_call_id.empty()) texts.push_back(m.tool_call_id);
  }
  for (const auto& m : api.backend.messages) texts.push_back(m.content);
  if (api.backend.prompt) texts.push_back(*api.backend.prompt);
  in.texts = texts;
  in.max_tokens = api.backend.params.max_tokens;
  in.edge_unsupported = remote_only.edge_unsupported;
  in.memory_pressure = memory_->level();
  const auto& rc = router_->config();
  const auto usable = [&](const std::string& tier, std::string& why) {
    if (tier.empty()) return false;
    if (auto b = executor_->backend(tier)) why = b->unavailable_reason();
    if (why.empty() && shared_->breaker_open(tier)) why = "a replica's circuit breaker is open";
    return why.empty() && executor_->available(tier);
  };
  std::string edge_down, cloud_down;
  in.edge_available = usable(rc.edge_tier, edge_down);
  in.cloud_available = usable(rc.cloud_tier, cloud_down);
  if (in.edge_available) {
    if (auto b = executor_->backend(rc.edge_tier)) {
      backend::BackendRequest probe;
      probe.messages = api.backend.messages;
      probe.prompt = api.backend.prompt;
      if (auto n = b->count_prompt_tokens(probe)) in.prompt_tokens = *n;
      in.edge_queue_depth = b->queued_requests();
      if (const auto load = b->load()) {
        in.edge_load =
            route::RouteInput::EdgeLoad{load->running,        load->queued,
                                        load->slots,          load->queued_prompt_tokens,
                                        load->decode_step_ms, load->prefill_ms_per_token};
      }
    }
  }
  route::Decision d = router_->decide(in);
  if (d.plan.kind == route::PlanKind::kReject) {
    rejected_->add();
    const bool refused = d.plan.reason.find("refused") != std::string::npos;
    const auto fired = [&](std::string_view rule) {
      return std::find(d.rules_fired.begin(), d.rules_fired.end(), rule) != d.rules_fired.end();
    };
    // Asking the edge for what it cannot do fails the same way every time,
    // unless a cloud tier that could do it is only down for now (and was not
    // ruled out by a forced tier).
    const bool cloud_could_come_back = fired("cloud-unavailable") && !fired("forced-tier");
    const bool unsupported = fired("edge-lacks-feature") && !cloud_could_come_back && !refused;
    // Too long for the edge and not allowed elsewhere: retrying cannot help,
    // so it is a 400 SDKs do not retry, not a 503 they do.
    const bool too_long = fired("edge-context-exceeded") && !cloud_could_come_back && !refused;
    if (too_long) {
      error.kind = RefusalKind::kInvalidRequest;
      error.code = "context_length_exceeded";
      error.message = d.plan.reason + "; shorten the prompt or lower max_tokens";
      return d;
    }
    error.kind = refused       ? RefusalKind::kForbidden
                 : unsupported ? RefusalKind::kInvalidRequest
                               : RefusalKind::kUnavailable;
    error.code = refused       ? "data_class_forbids_tier"
                 : unsupported ? "unsupported_on_edge"
                               : "no_tier_available";
    error.message = d.plan.reason;
    if (unsupported) error.param = edge_unsupported_param(api.backend.remote_only.edge_unsupported);
    for (const std::string* why : {&edge_down, &cloud_down}) {
      if (!why->empty()) error.message += " (" + *why + ")";
    }
    // A tier down behind its breaker comes back when it probes: say when.
    if (error.kind == RefusalKind::kUnavailable) {
      double wait = 0.0;
      for (const std::string& tier : {rc.edge_tier, rc.cloud_tier}) {
        const double probe = tier.empty() ? 0.0 : executor_->seconds_until_probe(tier);
        if (probe > 0.0 && (wait == 0.0 || probe < wait)) wait = probe;
      }
      if (wait == 0.0 && !rc.cloud_tier.empty() && shared_->breaker_open(rc.cloud_tier)) {
        wait = 1.0;
      }
      if (wait > 0.0) error.retry_after_seconds = std::max(1.0, std::ceil(wait));
    }
  }
  return d;
}

namespace {

// An edge answer is degraded when the policy wanted the cloud and the cloud
// was down before anything was tried (breaker open, tier unavailable): the
// client asked for more than it got, as with a fallback after a failure.
std::string degraded_before_running(const route::Decision& d) {
  if (d.plan.kind != route::PlanKind::kEdge || d.plan.forced) return {};
  if (std::find(d.rules_fired.begin(), d.rules_fired.end(), "cloud-unavailable") ==
      d.rules_fired.end()) {
    return {};
  }
  const auto& s = d.signals;
  const bool wanted_cloud =
      d.policy == route::PolicyKind::kCloud || d.policy == route::PolicyKind::kCascade ||
      d.policy == route::PolicyKind::kConsistency ||
      (d.policy == route::PolicyKind::kThreshold && s.complexity >= s.complexity_threshold);
  if (!wanted_cloud || s.sensitivity.data_class == route::DataClass::kDeviceOnly) return {};
  return "policy " + std::string(route::to_string(d.policy)) + " wanted the cloud, but " +
         d.plan.reason;
}

}  // namespace

Result<exec::ExecutionResult> Pipeline::execute(const route::Decision& decision,
                                                const backend::BackendRequest& request,
                                                const backend::DeltaSink& on_delta,
                                                const exec::SourceSink& on_source) {
  backend::BackendRequest budgeted = request;
  budgeted.egress_clearance = egress_clearance(decision, request);
  if (decision.signals.latency_budget_ms) {
    // The budget bounds every step to the first token: attempts, retries, waits.
    budgeted.first_token_deadline =
        std::chrono::steady_clock::now() +
        std::chrono::microseconds(static_cast<int64_t>(*decision.signals.latency_budget_ms * 1e3));
  }
  std::string degraded_why = degraded_before_running(decision);
  // A degraded answer carries its confidence, measured on its logprobs.
  if (!degraded_why.empty()) budgeted.params.logprobs = true;
  auto result = executor_->run(decision.plan, budgeted, on_delta, on_source);
  for (const std::string* tier : {&decision.plan.cloud_tier, &decision.plan.edge_tier}) {
    if (!tier->empty() && executor_->breaker_state(*tier) == exec::BreakerState::kOpen) {
      shared_->publish_breaker_open(*tier);
    }
  }
  if (result.ok() && !result->degraded && !degraded_why.empty()) {
    result->degraded = true;
    result->degraded_reason = std::move(degraded_why);
    result->confidence =
        std::exp(exec::measure_confidence(result->completion.logprobs).mean_logprob);
  }
  return result;
}

void Pipeline::finish(const Request& api, const RouteHints& hints, const route::Decision& d,
                      const Result<exec::ExecutionResult>& r, double total_ms, int status) {
  metrics_
      ->counter(
          "foreshore_decisions_total", "Routing decisions by policy and plan.", {"policy", "plan"},
          {std::string(route::to_string(d.policy)), std::string(route::to_string(d.plan.kind))})
      .add();
  for (const auto& rule : d.rules_fired) {
    metrics_->counter("foreshore_rules_fired_total", "Routing rules that fired.", {"rule"}, {rule})
        .add();
  }
  if (!decision_log_path_.empty()) {
    nlohmann::json j;
    route::to_json(j, d);
    j["served_by"] = r.ok() ? r->tier : "";
    j["status"] = status;
    j["total_ms"] = total_ms;
    if (r.ok()) j["trace"] = r->trace;
    const std::string line = j.dump() + "\n";
    std::lock_guard lock(decision_log_mu_);
    if (decision_log_max_bytes_ > 0 &&
        decision_log_bytes_ + static_cast<int64_t>(line.size()) > decision_log_max_bytes_) {
      // Full: the older half of the history moves to PATH.1 (replacing the
      // one before), and the log starts again.
      std::fclose(decision_log_);
      std::rename(decision_log_path_.c_str(), (decision_log_path_ + ".1").c_str());
      decision_log_ = std::fopen(decision_log_path_.c_str(), "a");
      decision_log_bytes_ = 0;
      if (decision_log_ == nullptr) {
        std::fprintf(stderr, "decision log: cannot reopen %s after rotating it; not logging\n",
                     decision_log_path_.c_str());
      }
    }
    if (decision_log_ != nullptr) {
      std::fwrite(line.data(), 1, line.size(), decision_log_);
      std::fflush(decision_log_);
      decision_log_bytes_ += static_cast<int64_t>(line.size());
    }
  }
  const backend::TierConfig* served = r.ok() ? tier_config(r->tier) : nullptr;
  if (served != nullptr) {
    const backend::Usage& u = r->completion.usage;
    shared_->settle(hints.reservation, completion_cost_usd(*served, u),
                    int64_t{u.prompt_tokens} + u.completion_tokens);
  } else {
    shared_->settle(hints.reservation, 0.0, 0);
  }
  {
    const std::string outcome = r.ok() ? outcome_of(r) : "error";
    const std::string tier = r.ok() ? r->tier : "none";
    const std::string model = r.ok() ? r->completion.model : "";
    const std::vector<std::string> labels = {tier, model, std::string(route::to_string(d.policy)),
                                             outcome};
    const std::vector<std::string> names = {"tier", "model", "policy", "outcome"};
    metrics_
        ->histogram("foreshore_hybrid_request_seconds",
                    "Whole-request latency by serving tier, model, policy and outcome.", names,
                    labels)
        .observe(total_ms / 1e3);
    if (r.ok() && r->completion.time_to_first_token_ms > 0) {
      metrics_
          ->histogram("foreshore_hybrid_ttft_seconds",
                      "Time to first token by serving tier, model, policy and outcome.", names,
                      labels)
          .observe(r->completion.time_to_first_token_ms / 1e3);
    }
    if (served != nullptr) {
      metrics_
          ->counter("foreshore_cost_usd_total", "Dollars spent, at configured prices.",
                    {"tier", "model", "policy"}, {labels[0], labels[1], labels[2]})
          .add(completion_cost_usd(*served, r->completion.usage));
    }
  }
  if (r.ok()) {
    if (r->escalated) escalations_->add();
    if (r->degraded) degraded_->add();
    if (r->similarity) {
      metrics_
          ->counter("foreshore_consistency_total", "Consistency checks by outcome.", {"outcome"},
                    {r->tier == d.plan.edge_tier ? "agree" : "disagree"})
          .add();
    }
    versions_->observe(r->tier, r->completion.model, r->completion.model_version);
    if (!hints.session.empty()) {
      versions_->record(hints.session, r->tier, r->completion.model_version);
      if (shared_->shared()) shared_->pin(hints.session, r->tier);
    }
    if (learning_ && served != nullptr) {
      const std::string& text = api.backend.prompt ? *api.backend.prompt
                                : api.backend.messages.empty()
                                    ? std::string()
                                    : api.backend.messages.back().content;
      learning_->record(d, text, served->placement == backend::Placement::kDevice,
                        d.plan.kind == route::PlanKind::kCascade, r->escalated);
    }
    if (shadow_ && served != nullptr && served->placement == backend::Placement::kDevice &&
        d.plan.cloud_allowed) {
      exec::ShadowJob job;
      job.request_id = d.id;
      job.data_class = d.signals.sensitivity.data_class;
      job.messages = api.backend.messages;
      job.prompt = api.backend.prompt;
      job.params = api.backend.params;
      job.edge_answer = r->completion.text;
      job.edge_model_version = r->completion.model_version;
      job.cancelled = std::make_shared<std::atomic<bool>>(false);
      shadow_->maybe_submit(std::move(job));
    }
  }
  if (!audit_ && !pg_audit_) return;
  observe::AuditRecord rec;
  rec.request_id = api.backend.request_id;
  rec.decision_id = d.id;
  rec.policy = std::string(route::to_string(d.policy));
  rec.plan_kind = std::string(route::to_string(d.plan.kind));
  rec.data_class = std::string(route::to_string(d.signals.sensitivity.data_class));
  rec.total_ms = total_ms;
  rec.http_status = status;
  rec.outcome = outcome_of(r);
  const backend::TierConfig* cloud = tier_config(router_->config().cloud_tier);
  if (r.ok()) {
    const auto& c = r->completion;
    rec.tier = r->tier;
    rec.placement =
        backend::placement_name(served ? served->placement : backend::Placement::kDevice);
    rec.model = c.model;
    rec.model_version = c.model_version;
    rec.prompt_tokens = c.usage.prompt_tokens;
    rec.completion_tokens = c.usage.completion_tokens;
    if (served) rec.cost_usd = completion_cost_usd(*served, c.usage);
    if (cloud) rec.cloud_cost_usd = completion_cost_usd(*cloud, c.usage);
    if (c.time_to_first_token_ms > 0) rec.ttft_ms = c.time_to_first_token_ms;
    rec.confidence = r->confidence;
    rec.escalated = r->escalated;
    rec.degraded = r->degraded;
  }
  for (const auto& m : api.backend.messages) rec.prompt_text += m.content + "\n";
  if (api.backend.prompt) rec.prompt_text += *api.backend.prompt;
  if (pg_audit_) pg_audit_->submit(audit_ ? rec : std::move(rec));
  if (audit_) audit_->submit(std::move(rec));
}

}  // namespace foreshore::hybrid
