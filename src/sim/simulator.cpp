// Trace replay through the real router, with tier latency and price models.
#include <algorithm>
#include <cmath>
#include <deque>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

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

// One shared edge as a fluid model of continuous batching: up to `slots`
// requests run at once, each progressing at speedup(n) / n of its speed
// alone while n run; the rest wait in arrival order. Work is in ms at the
// edge's speed alone. Each request's (work done, time since arrival) points
// are kept at every change of rate, so its clock is exact between them.
class SharedEdge {
 public:
  struct Job {
    size_t index = 0;
    double arrival_ms = 0.0;
    double work_ms = 0.0;
    int32_t prompt_tokens = 0;
    route::Decision decision;
    double done_ms = 0.0;                             // work done so far
    std::vector<std::pair<double, double>> progress;  // (work done, ms since arrival)

    // The time since arrival at which `work` ms of the request were done.
    double clock(double work) const {
      auto after = std::lower_bound(progress.begin(), progress.end(), work,
                                    [](const auto& p, double w) { return p.first < w; });
      if (after == progress.end()) return progress.back().second;
      if (after == progress.begin()) return after->second;
      const auto before = after - 1;
      const double span = after->first - before->first;
      return span <= 0.0 ? after->second
                         : before->second +
                               (work - before->first) / span * (after->second - before->second);
    }
  };

  explicit SharedEdge(const SimulationOptions& options) : options_(options) {}

  // Runs the edge until `now_ms`, handing each request that ends to `done`.
  template <typename Done>
  void advance_to(double now_ms, Done&& done) {
    while (!running_.empty()) {
      const double rate = share();
      auto first = std::min_element(
          running_.begin(), running_.end(),
          [](const Job& a, const Job& b) { return a.work_ms - a.done_ms < b.work_ms - b.done_ms; });
      const double ends_at = now_ + (first->work_ms - first->done_ms) / rate;
      if (ends_at > now_ms) break;
      progress_all(ends_at - now_, rate);
      first->done_ms = first->work_ms;
      done(*first);
      running_.erase(first);
      while (running_.size() < slots() && !waiting_.empty()) {
        Job next = std::move(waiting_.front());
        waiting_.pop_front();
        start(std::move(next));
      }
    }
    if (now_ms > now_) {
      if (!running_.empty()) progress_all(now_ms - now_, share());
      now_ = now_ms;
    }
  }

  template <typename Done>
  void drain(Done&& done) {
    advance_to(std::numeric_limits<double>::infinity(), done);
  }

  void add(Job job) {
    if (running_.size() < slots()) {
      start(std::move(job));
    } else {
      waiting_.push_back(std::move(job));
    }
  }

  int32_t depth() const { return static_cast<int32_t>(running_.size() + waiting_.size()); }

  // The load the embedded tier reports to the router (EdgeLoad): the step
  // time is that of the batch now running (one request's when idle).
  route::RouteInput::EdgeLoad load() const {
    route::RouteInput::EdgeLoad l;
    l.running = static_cast<int32_t>(running_.size());
    l.queued = static_cast<int32_t>(waiting_.size());
    l.slots = static_cast<int32_t>(slots());
    for (const Job& j : waiting_) l.queued_prompt_tokens += j.prompt_tokens;
    const int32_t n = std::max(1, l.running);
    if (options_.edge.output_tokens_per_s > 0) {
      l.decode_step_ms =
          1000.0 * n / (options_.edge.output_tokens_per_s * options_.batch_speedup(n));
    }
    if (options_.edge.prompt_tokens_per_s > 0) {
      l.prefill_ms_per_token = 1000.0 / options_.edge.prompt_tokens_per_s;
    }
    return l;
  }

 private:
  size_t slots() const { return static_cast<size_t>(std::max(1, options_.edge_slots)); }
  double share() const {
    const auto n = static_cast<int32_t>(running_.size());
    return options_.batch_speedup(n) / n;
  }
  void start(Job job) {
    job.progress.emplace_back(0.0, now_ - job.arrival_ms);
    running_.push_back(std::move(job));
  }
  void progress_all(double elapsed_ms, double rate) {
    now_ += elapsed_ms;
    for (Job& j : running_) {
      j.done_ms = std::min(j.work_ms, j.done_ms + elapsed_ms * rate);
      j.progress.emplace_back(j.done_ms, now_ - j.arrival_ms);
    }
  }

  const SimulationOptions& options_;
  double now_ = 0.0;
  std::vector<Job> running_;
  std::deque<Job> waiting_;
};

}  // namespace

double SimulationOptions::batch_speedup(int32_t running) const {
  if (running <= 1 || edge_batch_speedup.empty()) return 1.0;
  const size_t i = std::min(static_cast<size_t>(running), edge_batch_speedup.size()) - 1;
  return std::max(edge_batch_speedup[i], 1e-9);
}

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
  std::unique_ptr<Simulator> sim(new Simulator());
  auto router = route::Router::create(config.routing, tier_profiles(config, options, trace));
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
                                 const std::function<double(double work)>& edge_clock) const {
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
  const double edge_start = edge_clock(0.0);
  const double edge_ttft = edge_clock(edge_work_ttft);
  const double edge_total = edge_clock(edge_work_ttft + options_.edge.decode_ms(out - 1));
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
    o.edge_busy_ms = edge_total - edge_start;
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
      const double decided_at = edge_clock(edge_work_ttft + options_.edge.decode_ms(hold - 1));
      if (edge_unsure && plan.cloud_allowed) {
        o.escalated = o.answered_by_cloud = o.cloud_called = true;
        o.ttft_ms = decided_at + cloud_ttft;
        o.total_ms = decided_at + cloud_total;
        o.cost_usd = priced(edge_in_price_, edge_out_price_, in, hold) + o.cloud_only_cost_usd;
        o.edge_busy_ms = decided_at - edge_start;  // the edge stops at the decision
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
      o.edge_busy_ms = edge_total - edge_start;
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
  if (o.edge_busy_ms > 0.0) o.edge_wait_ms = edge_start;
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
  rep.outcomes.resize(trace_.size());
  const auto alone = [](double work) { return work; };
  // A request on a shared edge is replayed again when it ends, with the
  // clock of its wait and its share of the batches it ran in.
  SharedEdge shared(options_);
  const auto finish = [&](const SharedEdge::Job& job) {
    rep.outcomes[job.index] =
        replay(job.index, job.decision, [&job](double work) { return job.clock(work); });
  };
  for (size_t i = 0; i < trace_.size(); ++i) {
    const std::string_view text = trace_[i].prompt;
    route::RouteInput in = route_input(trace_[i], policy, {&text, 1});
    const double arrival_ms = trace_[i].arrival_s * 1000.0;
    if (options_.shared_edge) {
      shared.advance_to(arrival_ms, finish);
      in.edge_queue_depth = shared.depth();
      in.edge_load = shared.load();
    }
    route::Decision d = router_->decide(in);
    RequestOutcome o = replay(i, d, alone);
    if (options_.shared_edge && o.edge_busy_ms > 0.0) {
      SharedEdge::Job job;
      job.index = i;
      job.arrival_ms = arrival_ms;
      job.work_ms = o.edge_busy_ms;
      job.prompt_tokens = o.prompt_tokens;
      job.decision = std::move(d);
      shared.add(std::move(job));
    } else {
      rep.outcomes[i] = std::move(o);
    }
  }
  shared.drain(finish);

  std::vector<double> all, edge, cloud, escalated, edge_wait;
  double quality = 0, cloud_only_quality = 0, predicted = 0;
  for (size_t i = 0; i < trace_.size(); ++i) {
    const RequestOutcome& o = rep.outcomes[i];
    if (o.edge_busy_ms > 0.0) edge_wait.push_back(o.edge_wait_ms);
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
    // At the 4 decimals reports show (down to stay at or below its score, up
    // for the last), so that no two points of the sweep read as one threshold.
    const double t = rank < scores.size()
                         ? std::floor(scores[rank] * 1e4) / 1e4
                         : std::min(1.0, std::ceil(std::nextafter(scores.back(), 2.0) * 1e4) / 1e4);
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

int32_t edge_tier_slots(const config::GatewayConfig& config) {
  for (const auto& t : config.tiers) {
    if (t.placement == backend::Placement::kDevice) return std::max(1, t.max_concurrency);
  }
  return 1;
}

namespace {

// The aggregate generation speed of n requests started together, relative
// to one alone, for n = 1 .. slots: measured at 1, 2, 4, ... and slots,
// linear between.
Result<std::vector<double>> measure_batch_speedup(backend::Backend& edge, int32_t slots) {
  auto tokens_per_s = [&](int32_t n) -> Result<double> {
    std::vector<Result<backend::Completion>> results(n,
                                                     make_error(ErrorKind::kInternal, "not run"));
    const auto start = std::chrono::steady_clock::now();
    {
      std::vector<std::jthread> clients;
      for (int32_t i = 0; i < n; ++i) {
        clients.emplace_back([&, i] {
          backend::BackendRequest r;
          r.request_id = "simulate-measure-batch";
          r.prompt = "Story " + std::to_string(i) + ": once upon a time, a little bird";
          r.params.max_tokens = 32;
          r.params.temperature = 0.0f;
          results[i] = edge.generate(r, {});
        });
      }
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    int64_t tokens = 0;
    for (auto& r : results) {
      if (!r.ok()) return r.error();
      tokens += r->usage.completion_tokens;
    }
    return seconds > 0 && tokens > 0 ? tokens / seconds : 0.0;
  };
  std::vector<std::pair<int32_t, double>> measured;
  for (int32_t n = 1; n <= slots; n = n < slots && n * 2 > slots ? slots : n * 2) {
    FSH_ASSIGN_OR_RETURN(double rate, tokens_per_s(n));
    measured.emplace_back(n, rate);
    if (n == slots) break;
  }
  if (measured.front().second <= 0) {
    return make_error(ErrorKind::kInternal,
                      "measuring the edge's batching produced no tokens; give its curve with "
                      "--edge-batch-speedup");
  }
  std::vector<double> speedup;
  for (int32_t n = 1; n <= slots; ++n) {
    auto hi =
        std::find_if(measured.begin(), measured.end(), [n](const auto& m) { return m.first >= n; });
    double rate = hi->second;
    if (hi->first != n) {
      const auto lo = hi - 1;
      rate = lo->second + (hi->second - lo->second) * (n - lo->first) / (hi->first - lo->first);
    }
    speedup.push_back(rate / measured.front().second);
  }
  return speedup;
}

}  // namespace

Result<SimulationOptions> measure_edge(const config::GatewayConfig& config,
                                       SimulationOptions base) {
  const route::RouterConfig& routing = config.routing;
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
  if (base.edge_slots <= 0) base.edge_slots = std::max(1, edge->max_concurrency);
  if (base.edge_batch_speedup.empty()) {
    FSH_ASSIGN_OR_RETURN(base.edge_batch_speedup, measure_batch_speedup(*b, base.edge_slots));
  }
  return base;
}

}  // namespace foreshore::sim
