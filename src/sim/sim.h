// The simulator and advisor: what would hybrid routing do for this workload?
//
// A trace of requests (JSONL, one request a line) is replayed through the
// real router (route::Router, configured from the gateway's own YAML), with
// models of each tier's latency and price standing in for the tiers
// themselves. Each policy gets a PolicyReport: cost against cloud-only, TTFT
// percentiles, cloud share, quality when the trace carries per-tier scores,
// cascade escalations, and privacy violations (device-only data planned for
// a cloud tier; must be 0). The advisor applies the decision framework of
// docs/SIMULATOR.md to a trace. Reports render as text, Markdown and SVG.
// Formats, distributions and models are documented in docs/SIMULATOR.md.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "hybrid/config.h"
#include "observe/report.h"
#include "route/router.h"
#include "sim/svg.h"  // the charts, shared with `router eval`

namespace foreshore::sim {

// ---- trace ----------------------------------------------------------------------

// One request of a trace. Either `prompt` or `prompt_tokens` is present.
struct TraceRecord {
  int64_t line = 0;  // 1-based line in the trace file, for messages
  std::string id;
  double arrival_s = 0.0;  // "t": seconds since the start of the trace
  std::string prompt;      // what the router scans and scores; may be empty
  std::optional<int32_t> prompt_tokens;
  std::optional<int32_t> output_tokens;        // expected answer length
  std::optional<route::DataClass> data_class;  // as the client would declare it
  std::optional<double> latency_budget_ms;     // to first token
  std::optional<double> cost_ceiling_usd;
  // Quality of each tier's answer in [0, 1], when known (judge scores, tests).
  std::optional<double> edge_quality;
  std::optional<double> cloud_quality;
};

// Parses one JSONL line; errors name `source`, the line number and the field.
Result<TraceRecord> parse_trace_line(std::string_view line, int64_t line_number,
                                     std::string_view source);
// Blank lines are skipped; the first malformed line is the error.
Result<std::vector<TraceRecord>> parse_trace(std::string_view text, std::string_view source);
Result<std::vector<TraceRecord>> read_trace(const std::string& path);
std::string trace_record_to_json_line(const TraceRecord& record);
Status write_trace(const std::string& path, std::span<const TraceRecord> records);

// The synthetic workload (distributions in docs/SIMULATOR.md).
struct TraceGeneratorOptions {
  int64_t requests = 1000;
  uint64_t seed = 1;
  double mean_rate_per_s = 0.5;    // averaged over a day
  double diurnal_amplitude = 0.6;  // rate swings by this fraction around the mean
};
std::vector<TraceRecord> generate_trace(const TraceGeneratorOptions& options);

// ---- tier models ----------------------------------------------------------------

// Time to first token = (network RTT + fixed overhead + prompt prefill) x
// jitter; each later token takes 1 / output_tokens_per_s. Jitter is
// log-normal with median 1, drawn per request and tier from the seed.
struct TierLatencyModel {
  double network_rtt_ms = 0.0;
  double overhead_ms = 0.0;  // queueing, scheduling, first-token work beyond prefill
  double prompt_tokens_per_s = 0.0;
  double output_tokens_per_s = 0.0;
  double jitter_sigma = 0.0;  // of the log-normal factor on TTFT

  double ttft_ms(int32_t prompt_tokens, double jitter_factor = 1.0) const;
  double decode_ms(int32_t tokens_after_first) const;
};

// Defaults: edge = SmolLM2-135M Q8_0 on the 2-core dev machine
// (docs/PERFORMANCE.md); cloud = a typical hosted API (docs/SIMULATOR.md).
TierLatencyModel default_edge_latency();
TierLatencyModel default_cloud_latency();

// How a cascade decides to escalate, standing in for the edge answer's
// log-probabilities. With quality scores: an edge answer below `quality_bar`
// is caught with probability `recall`, an adequate one escalated with
// probability `false_alarm`. Without scores: the router's complexity (its
// P(edge inadequate)) is the escalation probability.
struct EscalationModel {
  double quality_bar = 0.5;
  double recall = 0.85;
  double false_alarm = 0.1;
};

struct SimulationOptions {
  TierLatencyModel edge = default_edge_latency();
  TierLatencyModel cloud = default_cloud_latency();
  EscalationModel escalation;
  int32_t edge_context = 0;  // tokens; 0: the config's, else unknown (no limit)
  uint64_t seed = 1;         // jitter and escalation draws; the same for every policy
  // The edge as one shared server, as the embedded tier is: it runs up to
  // edge_slots requests at once (continuous batching) and queues the rest in
  // arrival order, and the router sees its load as it does in the gateway.
  // False: every request finds its edge free (one device per user).
  bool shared_edge = false;
  int32_t edge_slots = 1;  // the embedded tier's max_concurrency; <= 0: 1 (see measure_edge)
  // The shared edge's aggregate speed with n requests running, relative to
  // one alone: entry n-1, the last entry holding beyond the end; empty or
  // all 1: batching adds concurrency but no throughput. Every running
  // request progresses at edge_batch_speedup[n-1] / n of its speed alone
  // (prompt loading and generation alike). measure_edge measures it.
  std::vector<double> edge_batch_speedup;

  // The shared edge's aggregate speedup at n running requests (>= 1).
  double batch_speedup(int32_t running) const;
};

// ---- replay ---------------------------------------------------------------------

// Where one request went and what it cost under one policy.
struct RequestOutcome {
  route::PlanKind plan = route::PlanKind::kEdge;
  route::DataClass data_class = route::DataClass::kPublic;  // the router's verdict
  double complexity = 0.0;
  int32_t prompt_tokens = 0;  // as the router counted them
  int32_t output_tokens = 0;
  bool answered_by_cloud = false;
  bool cloud_called = false;  // any byte sent to a cloud tier
  bool escalated = false;
  bool rejected = false;
  bool privacy_violation = false;
  double ttft_ms = 0.0;  // 0 for rejected requests
  double total_ms = 0.0;
  double edge_wait_ms = 0.0;  // queued for a shared edge (SimulationOptions::shared_edge)
  double edge_busy_ms = 0.0;  // how long the edge worked on this request
  double cost_usd = 0.0;
  double cloud_only_cost_usd = 0.0;  // the same request priced at the cloud tier
  std::optional<double> quality;     // with scores; 0 for a rejected request
  double predicted_quality = 0.0;    // the router's own estimate for the plan
};

struct PolicyReport {
  std::string label;  // "threshold", "threshold@0.42", ...
  route::PolicyKind policy = route::PolicyKind::kThreshold;
  double threshold = 0.0;  // the complexity threshold in force
  int64_t requests = 0;
  int64_t edge_answers = 0, cloud_answers = 0, escalations = 0, rejected = 0;
  int64_t cloud_calls = 0;
  double cost_usd = 0.0;
  double cloud_only_cost_usd = 0.0;
  double saved_usd = 0.0;
  double saved_pct = 0.0;           // of cloud-only cost
  double cloud_share = 0.0;         // answered by the cloud
  observe::LatencySummary ttft_ms;  // answered requests
  observe::LatencySummary edge_ttft_ms, cloud_ttft_ms, escalated_ttft_ms;
  // Time queued for a shared edge, over the requests the edge worked on.
  observe::LatencySummary edge_wait_ms;
  // Mean over requests with both scores (nullopt when none have them).
  std::optional<double> quality;
  std::optional<double> cloud_only_quality;
  double predicted_quality = 0.0;  // the router's estimate, for traces without scores
  int64_t scored_requests = 0;
  int64_t privacy_violations = 0;
  std::vector<RequestOutcome> outcomes;  // in trace order
};

// The gateway's tiers as the router sees them; each tier's latency prior is
// its model's TTFT at the trace's mean prompt length.
std::vector<route::TierProfile> tier_profiles(const config::GatewayConfig& config,
                                              const SimulationOptions& options,
                                              std::span<const TraceRecord> trace);

// The RouteInput the gateway would build for this record; `texts` (the
// record's prompt as one user message) must outlive it.
route::RouteInput route_input(const TraceRecord& record, route::PolicyKind policy,
                              std::span<const std::string_view> texts);

class Simulator {
 public:
  // Builds one router from `config` (routing: and privacy: sections, tiers
  // and prices) for the whole trace.
  static Result<std::unique_ptr<Simulator>> create(const config::GatewayConfig& config,
                                                   SimulationOptions options,
                                                   std::vector<TraceRecord> trace);
  ~Simulator();

  // Replays the trace under one policy. A threshold overrides the router's
  // complexity threshold for this run only. Not thread-safe.
  PolicyReport run(route::PolicyKind policy, std::optional<double> threshold = std::nullopt);
  // The threshold policy at thresholds spaced by the trace's complexity
  // quantiles, so the curve runs from all-edge to all-cloud.
  std::vector<PolicyReport> sweep(int points);

  const route::Router& router() const { return *router_; }
  const std::vector<TraceRecord>& trace() const { return trace_; }
  const SimulationOptions& options() const { return options_; }
  const std::string& cloud_tier() const { return cloud_tier_; }

 private:
  Simulator() = default;
  // edge_clock: the time since the request's arrival at which the edge has
  // done `work` ms of it, work measured at the edge's speed alone (a free
  // edge: work itself; a shared one: later, by its wait and its share).
  RequestOutcome replay(size_t index, const route::Decision& decision,
                        const std::function<double(double work)>& edge_clock) const;

  std::unique_ptr<route::Router> router_;
  SimulationOptions options_;
  std::vector<TraceRecord> trace_;
  std::string cloud_tier_;
  double edge_in_price_ = 0, edge_out_price_ = 0, cloud_in_price_ = 0, cloud_out_price_ = 0;
};

// The gateway config the commands use without --config: an embedded edge
// tier and an OpenAI-compatible cloud tier at gpt-4o-mini's list prices.
Result<config::GatewayConfig> default_gateway_config();

// The requests the config's edge (its first device tier) runs at once: its
// max_concurrency; 1 without one.
int32_t edge_tier_slots(const config::GatewayConfig& config);

// Measures the configured edge tier's prompt and generation speed by running
// its model briefly, then its aggregate generation speed with 2, 4, ... up
// to edge_slots requests at once (edge_batch_speedup, unless given); returns
// `base` with those and the model's context. edge_slots <= 0 becomes the
// tier's max_concurrency.
Result<SimulationOptions> measure_edge(const config::GatewayConfig& config, SimulationOptions base);

// ---- advisor --------------------------------------------------------------------

struct AdviceOptions {
  double tight_budget_ms = 200.0;       // "latency budget under 200 ms for the LLM stage"
  double tight_budget_min_share = 0.1;  // of requests, for the criterion to hold
  double gpu_usd_per_hour = 2.5;
  double gpu_tokens_per_s = 2500.0;        // prompt + output tokens one GPU sustains
  std::optional<double> api_usd_per_mtok;  // default: the cloud tier's prices, blended
  double min_quality_vs_cloud = 0.95;      // for the recommended setting
  int sweep_points = 21;
  // Below this many requests, shares and tail percentiles move with a handful
  // of requests, so the verdict comes with a warning.
  int64_t min_requests = 200;
};

struct Criterion {
  std::string name;
  bool holds = false;
  std::string evidence;  // the numbers behind the verdict
};

struct Advice {
  std::vector<Criterion> criteria;
  int holding = 0;
  bool hybrid_justified = false;  // at least two criteria hold
  std::string start_policy;       // what to start with
  std::optional<double> start_threshold;
  std::string recommendation;  // one paragraph, with the numbers
  std::string sample_warning;  // set when the trace is too small to trust
  // Break-even of a dedicated cloud GPU against the per-token API.
  double api_usd_per_mtok = 0.0;
  double break_even_utilization = 0.0;
  double sustained_utilization = 0.0;
  int32_t gpus_for_peak = 0;
  std::vector<PolicyReport> candidates;  // what the recommendation was chosen from
};

Advice advise(Simulator& simulator, const AdviceOptions& options);

// ---- output ---------------------------------------------------------------------

struct TraceSummary {
  int64_t requests = 0;
  double duration_s = 0.0;
  int64_t with_scores = 0;
  int64_t data_class_counts[4] = {0, 0, 0, 0};  // by route::DataClass, the router's verdict
  double mean_prompt_tokens = 0.0, mean_output_tokens = 0.0;
};
TraceSummary summarize_trace(Simulator& simulator);

std::string format_policy_table(std::span<const PolicyReport> reports);
nlohmann::json policy_report_to_json(const PolicyReport& report);
std::string format_advice(const Advice& advice);

// Pictures: hand-written SVG, one self-contained file each.
std::string cost_quality_svg(std::span<const PolicyReport> policies,
                             std::span<const PolicyReport> sweep);
// TTFT distribution of each path (edge, cloud, escalated), each from the
// policy that sends it the most requests.
std::string latency_svg(std::span<const PolicyReport> policies);
std::string traffic_svg(std::span<const PolicyReport> policies);

struct ReportInputs {
  std::string command;  // the command line, for reproduction
  std::string trace_path, config_source;
  TraceSummary trace;
  SimulationOptions options;
  std::vector<PolicyReport> policies;
  std::vector<PolicyReport> sweep;
  std::optional<Advice> advice;
};
// Writes report.md, cost_quality.svg, latency.svg and traffic.svg into `dir`
// (created when missing).
Status write_report(const std::string& dir, const ReportInputs& inputs);

}  // namespace foreshore::sim
