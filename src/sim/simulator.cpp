// Trace replay through the real router, with tier latency and price models.
#include <algorithm>
#include <cmath>
#include <deque>
#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "exec/exec.h"
#include "sim/random.h"
#include "sim/sim.h"

namespace foreshore::sim {
namespace {

// Independent draws per request (see stream_for).
enum Draw : uint64_t { kEdgeJitter = 1, kCloudJitter = 2, kEscalation = 3 };

// The router's own estimate when the caller gives no count (route/router.cpp):
// about four bytes a token, plus a few for the message framing.
int32_t estimated_prompt_tokens(const TraceRecord& r) {
  return r.prompt_tokens.value_or(static_cast<int32_t>(r.prompt.size() / 4 + 4 + 1));
}

double priced(double in_per_mtok, double out_per_mtok, int32_t in, int32_t out) {
  return (in_per_mtok * in + out_per_mtok * out) / 1e6;
}

const backend::TierConfig* find_tier(const config::GatewayConfig& c, std::string_view name) {
  for (const auto& t : c.tiers) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

}  // namespace

double TierLatencyModel::ttft_ms(int32_t prompt_tokens, double jitter_factor) const {
  const double prefill =
      prompt_tokens_per_s > 0 ? 1000.0 * prompt_tokens / prompt_tokens_per_s : 0.0;
  return (network_rtt_ms + overhead_ms + prefill) * jitter_factor;
}

double TierLatencyModel::decode_ms(int32_t tokens_after_first) const {
  if (output_tokens_per_s <= 0 || tokens_after_first <= 0) return 0.0;
  return 1000.0 * tokens_after_first / output_tokens_per_s;
}

TierLatencyModel default_edge_latency() {
  // SmolLM2-135M Q8_0, 2 threads: 551 prompt tok/s, 185 generated tok/s;
  // the overhead is the gateway, tokenizing and the first decode step.
  return TierLatencyModel{0.0, 10.0, 551.0, 185.0, 0.1};
}

TierLatencyModel default_cloud_latency() {
  return TierLatencyModel{60.0, 300.0, 4000.0, 80.0, 0.35};
}

std::vector<route::TierProfile> tier_profiles(const config::GatewayConfig& config,
                                              const SimulationOptions& options,
                                              std::span<const TraceRecord> trace) {
  double mean_prompt = 0.0;
  for (const auto& r : trace) mean_prompt += estimated_prompt_tokens(r);
  if (!trace.empty()) mean_prompt /= static_cast<double>(trace.size());
  std::vector<route::TierProfile> profiles;
  for (const auto& t : config.tiers) {
    // As the gateway builds them, except for the latency prior: the gateway's
    // EWMA of measured TTFT settles at the tier's mean, so the simulation
    // starts there instead of at the gateway's guess.
    const bool on_device = t.placement == backend::Placement::kDevice;
    const int32_t configured_context = t.embedded() != nullptr ? t.embedded()->context_length : 0;
    route::TierProfile p = exec::tier_profile(
        t, on_device && options.edge_context > 0 ? options.edge_context : configured_context);
    const TierLatencyModel& model = on_device ? options.edge : options.cloud;
    p.prior_ttft_ms = model.ttft_ms(static_cast<int32_t>(std::lround(mean_prompt)));
    p.prior_ms_per_token = model.output_tokens_per_s > 0 ? 1000.0 / model.output_tokens_per_s : 0;
    profiles.push_back(std::move(p));
  }
  return profiles;
}

route::RouteInput route_input(const TraceRecord& r, route::PolicyKind policy,
                              std::span<const std::string_view> texts) {
  route::RouteInput in;
  in.texts = texts;
  in.declared_class = r.data_class;
  in.latency_budget_ms = r.latency_budget_ms;
  in.cost_ceiling_usd = r.cost_ceiling_usd;
  in.policy = policy;
  in.max_tokens = r.output_tokens;
  in.prompt_tokens = r.prompt_tokens;
  return in;
}

Result<std::unique_ptr<Simulator>> Simulator::create(const config::GatewayConfig& config,
                                                     SimulationOptions options,
                                                     std::vector<TraceRecord> trace) {
  FSH_ASSIGN_OR_RETURN(route::RouterConfig routing,
                       route::router_config_from_yaml(config.routing, config.source));
  if (config.privacy) {
    FSH_ASSIGN_OR_RETURN(routing.privacy,
                         route::sensitivity_config_from_yaml(config.privacy, config.source));
  }
  std::unique_ptr<Simulator> sim(new Simulator());
  auto router = route::Router::create(std::move(routing), tier_profiles(config, options, trace));
  if (!router.ok()) {
    return make_error(router.error().kind, config.source + ": " + router.error().message);
  }
  sim->router_ = std::move(router).value();
  sim->options_ = options;
  sim->trace_ = std::move(trace);
  sim->cloud_tier_ = sim->router_->config().cloud_tier;
  if (const auto* e = find_tier(config, sim->router_->config().edge_tier)) {
    sim->edge_in_price_ = e->price_input_per_mtok;
    sim->edge_out_price_ = e->price_output_per_mtok;
  }
  if (const auto* c = find_tier(config, sim->cloud_tier_)) {
    sim->cloud_in_price_ = c->price_input_per_mtok;
    sim->cloud_out_price_ = c->price_output_per_mtok;
  }
  return sim;
}

Simulator::~Simulator() = default;

RequestOutcome Simulator::replay(size_t index, const route::Decision& d,
                                 double edge_wait_ms) const {
  const TraceRecord& rec = trace_[index];
  const route::Signals& s = d.signals;
  const route::Plan& plan = d.plan;
  RequestOutcome o;
  o.plan = plan.kind;
  o.data_class = s.sensitivity.data_class;
  o.complexity = s.complexity;
  o.prompt_tokens = s.prompt_tokens;
  o.output_tokens = s.expected_output_tokens;
  o.predicted_quality = plan.predicted_quality;
  const int32_t in = o.prompt_tokens, out = o.output_tokens;
  o.cloud_only_cost_usd = priced(cloud_in_price_, cloud_out_price_, in, out);

  const uint64_t seed = options_.seed;
  SplitMix64 edge_draw = stream_for(seed, index, kEdgeJitter);
  SplitMix64 cloud_draw = stream_for(seed, index, kCloudJitter);
  SplitMix64 escalation_draw = stream_for(seed, index, kEscalation);
  const double edge_work_ttft =
      options_.edge.ttft_ms(in, std::exp(edge_draw.normal(0.0, options_.edge.jitter_sigma)));
  const double edge_ttft = edge_wait_ms + edge_work_ttft;
  const double edge_total = edge_ttft + options_.edge.decode_ms(out - 1);
  const double cloud_ttft =
      options_.cloud.ttft_ms(in, std::exp(cloud_draw.normal(0.0, options_.cloud.jitter_sigma)));
  const double cloud_total = cloud_ttft + options_.cloud.decode_ms(out - 1);
  const double edge_cost = priced(edge_in_price_, edge_out_price_, in, out);
  const bool scored = rec.edge_quality && rec.cloud_quality;
  const double edge_q = rec.edge_quality.value_or(0.0);
  const double cloud_q = rec.cloud_quality.value_or(0.0);
  // The stand-in for the edge answer's confidence (EscalationModel).
  const bool edge_unsure = [&] {
    const double u = escalation_draw.uniform();
    if (!rec.edge_quality) return u < s.complexity;
    const bool inadequate = *rec.edge_quality < options_.escalation.quality_bar;
    return u < (inadequate ? options_.escalation.recall : options_.escalation.false_alarm);
  }();

  auto on_edge = [&] {
    o.ttft_ms = edge_ttft;
    o.total_ms = edge_total;
    o.edge_busy_ms = edge_total - edge_wait_ms;
    o.cost_usd = edge_cost;
    if (scored) o.quality = edge_q;
  };
  auto on_cloud = [&] {
    o.ttft_ms = cloud_ttft;
    o.total_ms = cloud_total;
    o.cost_usd = o.cloud_only_cost_usd;
    o.answered_by_cloud = o.cloud_called = true;
    if (scored) o.quality = cloud_q;
  };
  switch (plan.kind) {
    case route::PlanKind::kEdge:
      on_edge();
      break;
    case route::PlanKind::kCloud:
      on_cloud();
      break;
    case route::PlanKind::kCascade: {
      // Streaming cascade (exec/executor.cpp): the first hold_back tokens are
      // held until the edge looks sure; unsure stops the edge there and the
      // cloud answers from the start.
      const int32_t hold = std::clamp(plan.cascade.hold_back_tokens, 1, std::max(out, 1));
      const double decided_at = edge_ttft + options_.edge.decode_ms(hold - 1);
      if (edge_unsure && plan.cloud_allowed) {
        o.escalated = o.answered_by_cloud = o.cloud_called = true;
        o.ttft_ms = decided_at + cloud_ttft;
        o.total_ms = decided_at + cloud_total;
        o.cost_usd = priced(edge_in_price_, edge_out_price_, in, hold) + o.cloud_only_cost_usd;
        o.edge_busy_ms = decided_at - edge_wait_ms;  // the edge stops at the decision
        if (scored) o.quality = cloud_q;
      } else {
        on_edge();
        o.ttft_ms = decided_at;
        o.total_ms = std::max(edge_total, decided_at);
      }
      break;
    }
    case route::PlanKind::kConsistency:
      if (!plan.cloud_allowed) {
        on_edge();  // nothing to compare against: the executor runs the edge alone
        break;
      }
      // Both run to the end and are compared; the edge answer is kept when
      // they agree, which the edge's confidence model stands in for.
      o.cloud_called = true;
      o.edge_busy_ms = edge_total - edge_wait_ms;
      o.ttft_ms = o.total_ms = std::max(edge_total, cloud_total);
      o.cost_usd = edge_cost + o.cloud_only_cost_usd;
      o.answered_by_cloud = edge_unsure;
      if (scored) o.quality = edge_unsure ? cloud_q : edge_q;
      break;
    case route::PlanKind::kReject:
      o.rejected = true;
      if (scored) o.quality = 0.0;
      break;
  }
  if (o.edge_busy_ms > 0.0) o.edge_wait_ms = edge_wait_ms;
  const bool device_only = o.data_class == route::DataClass::kDeviceOnly ||
                           rec.data_class == route::DataClass::kDeviceOnly;
  o.privacy_violation = device_only && (o.cloud_called || plan.cloud_allowed);
  return o;
}

PolicyReport Simulator::run(route::PolicyKind policy, std::optional<double> threshold) {
  const double saved_threshold = router_->threshold();
  if (threshold) router_->set_threshold(*threshold);
  PolicyReport rep;
  rep.policy = policy;
  rep.threshold = router_->threshold();
  rep.label = std::string(route::to_string(policy));
  if (threshold) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "@%.4f", rep.threshold);
    rep.label += buf;
  }
  rep.requests = static_cast<int64_t>(trace_.size());
  rep.outcomes.reserve(trace_.size());
  std::vector<double> all, edge, cloud, escalated, edge_wait;
  double quality = 0, cloud_only_quality = 0, predicted = 0;
  // A shared edge serves its queue in arrival order: the end times of the
  // requests it holds, the last being when it is next free.
  std::deque<double> edge_jobs_end_ms;
  for (size_t i = 0; i < trace_.size(); ++i) {
    const std::string_view text = trace_[i].prompt;
    route::RouteInput in = route_input(trace_[i], policy, {&text, 1});
    const double arrival_ms = trace_[i].arrival_s * 1000.0;
    double edge_wait_ms = 0.0;
    if (options_.shared_edge) {
      while (!edge_jobs_end_ms.empty() && edge_jobs_end_ms.front() <= arrival_ms) {
        edge_jobs_end_ms.pop_front();
      }
      in.edge_queue_depth = static_cast<int32_t>(edge_jobs_end_ms.size());
      if (!edge_jobs_end_ms.empty()) edge_wait_ms = edge_jobs_end_ms.back() - arrival_ms;
    }
    const route::Decision d = router_->decide(in);
    RequestOutcome o = replay(i, d, edge_wait_ms);
    if (o.edge_busy_ms > 0.0) {
      edge_wait.push_back(o.edge_wait_ms);
      if (options_.shared_edge) {
        edge_jobs_end_ms.push_back(arrival_ms + edge_wait_ms + o.edge_busy_ms);
      }
    }
    rep.cost_usd += o.cost_usd;
    rep.cloud_only_cost_usd += o.cloud_only_cost_usd;
    rep.cloud_calls += o.cloud_called;
    rep.escalations += o.escalated;
    rep.privacy_violations += o.privacy_violation;
    predicted += o.predicted_quality;
    if (o.rejected) {
      ++rep.rejected;
    } else {
      all.push_back(o.ttft_ms);
      if (o.escalated) {
        escalated.push_back(o.ttft_ms);
      } else {
        (o.answered_by_cloud ? cloud : edge).push_back(o.ttft_ms);
      }
      ++(o.answered_by_cloud ? rep.cloud_answers : rep.edge_answers);
    }
    if (o.quality) {
      ++rep.scored_requests;
      quality += *o.quality;
      cloud_only_quality += *trace_[i].cloud_quality;
    }
    rep.outcomes.push_back(std::move(o));
  }
  router_->set_threshold(saved_threshold);
  const double n = std::max<double>(1.0, static_cast<double>(rep.requests));
  rep.saved_usd = rep.cloud_only_cost_usd - rep.cost_usd;
  rep.saved_pct =
      rep.cloud_only_cost_usd > 0 ? 100.0 * rep.saved_usd / rep.cloud_only_cost_usd : 0.0;
  rep.cloud_share = static_cast<double>(rep.cloud_answers) / n;
  rep.predicted_quality = predicted / n;
  if (rep.scored_requests > 0) {
    rep.quality = quality / static_cast<double>(rep.scored_requests);
    rep.cloud_only_quality = cloud_only_quality / static_cast<double>(rep.scored_requests);
  }
  rep.ttft_ms = observe::summarize_latency(std::move(all));
  rep.edge_ttft_ms = observe::summarize_latency(std::move(edge));
  rep.cloud_ttft_ms = observe::summarize_latency(std::move(cloud));
  rep.escalated_ttft_ms = observe::summarize_latency(std::move(escalated));
  rep.edge_wait_ms = observe::summarize_latency(std::move(edge_wait));
  return rep;
}

std::vector<PolicyReport> Simulator::sweep(int points) {
  if (trace_.empty()) return {};
  points = std::max(points, 2);
  std::vector<double> scores;
  scores.reserve(trace_.size());
  for (const auto& r : trace_) {
    const std::string_view text = r.prompt;
    scores.push_back(router_->decide(route_input(r, route::PolicyKind::kThreshold, {&text, 1}))
                         .signals.complexity);
  }
  std::sort(scores.begin(), scores.end());
  std::vector<double> thresholds;
  for (int k = 0; k < points; ++k) {
    // Point k sends about k/(points-1) of the trace to the edge; the last
    // threshold sits above every score, so everything the rules allow stays there.
    const size_t rank = static_cast<size_t>(
        std::llround(static_cast<double>(k) / (points - 1) * static_cast<double>(scores.size())));
    const double t =
        rank < scores.size() ? scores[rank] : std::min(1.0, std::nextafter(scores.back(), 2.0));
    if (thresholds.empty() || t > thresholds.back()) thresholds.push_back(t);
  }
  std::vector<PolicyReport> out;
  for (double t : thresholds) out.push_back(run(route::PolicyKind::kThreshold, t));
  return out;
}

Result<config::GatewayConfig> default_gateway_config() {
  return config::parse_config(
      "tiers:\n"
      "  edge: {kind: embedded, placement: device, model: stories260K}\n"
      "  cloud:\n"
      "    kind: openai\n"
      "    placement: cloud\n"
      "    endpoint: https://api.openai.com/v1\n"
      "    model: gpt-4o-mini\n"
      "    price: {input_per_mtok: 0.15, output_per_mtok: 0.60}\n",
      "built-in default config");
}

Result<SimulationOptions> measure_edge(const config::GatewayConfig& config,
                                       SimulationOptions base) {
  FSH_ASSIGN_OR_RETURN(route::RouterConfig routing,
                       route::router_config_from_yaml(config.routing, config.source));
  const backend::TierConfig* edge = nullptr;
  for (const auto& t : config.tiers) {
    const bool wanted = routing.edge_tier.empty() ? t.placement == backend::Placement::kDevice
                                                  : t.name == routing.edge_tier;
    if (wanted) {
      edge = &t;
      break;
    }
  }
  if (edge == nullptr || edge->embedded() == nullptr) {
    return make_error(ErrorKind::kInvalidArgument,
                      config.source +
                          ": --measure-edge needs an embedded device tier to run; give its "
                          "speeds with --edge-prompt-tps and --edge-gen-tps instead");
  }
  FSH_ASSIGN_OR_RETURN(std::shared_ptr<backend::Backend> b, backend::create_backend(*edge));
  auto measure = [&](const std::string& prompt) -> Result<backend::Completion> {
    backend::BackendRequest r;
    r.request_id = "simulate-measure";
    r.prompt = prompt;
    r.params.max_tokens = 48;
    r.params.temperature = 0.0f;
    return b->generate(r, {});
  };
  // The first run warms caches and page-ins; the second, on a different
  // prompt so that no KV prefix is reused, is the measurement.
  if (auto warm = measure("Once upon a time, a"); !warm.ok()) return warm.error();
  std::string prompt = "One day, a little girl named Lily went to the park with her mother.";
  while (prompt.size() < 400) prompt += " She saw a big red ball and a small dog under a tree.";
  FSH_ASSIGN_OR_RETURN(backend::Completion c, measure(prompt));
  const int32_t prefilled = c.usage.prompt_tokens - c.usage.cached_prompt_tokens;
  const double decode_s = (c.total_ms - c.time_to_first_token_ms) / 1000.0;
  if (prefilled < 1 || c.usage.completion_tokens < 2 || c.time_to_first_token_ms <= 0 ||
      decode_s <= 0) {
    return make_error(ErrorKind::kInternal,
                      "measuring tier '" + edge->name + "' produced too few tokens (" +
                          std::to_string(c.usage.completion_tokens) +
                          "); give its speeds with --edge-prompt-tps and --edge-gen-tps");
  }
  base.edge.prompt_tokens_per_s = prefilled / (c.time_to_first_token_ms / 1000.0);
  base.edge.output_tokens_per_s = (c.usage.completion_tokens - 1) / decode_s;
  // The prefill rate above already includes the fixed per-request work.
  base.edge.overhead_ms = 0.0;
  if (base.edge_context <= 0) base.edge_context = b->info().context_length;
  return base;
}

}  // namespace foreshore::sim
