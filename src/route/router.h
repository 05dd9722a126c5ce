// The router: signals -> policy -> Plan, decided on the device in
// microseconds, with an explanation of every decision.
//
// Hard constraints come first (the `rules` stage): device-only data never gets
// a plan with a cloud step, contractual data only reaches tiers that accept
// it, and a forced tier is honoured only where those rules allow. The chosen
// policy (threshold, cascade, consistency, optimize, edge, cloud) then picks
// among the plans the rules left.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "route/complexity.h"
#include "route/online_learner.h"
#include "route/sensitivity.h"

namespace foreshore::route {

enum class PolicyKind { kThreshold, kCascade, kConsistency, kOptimize, kEdge, kCloud };
std::string_view to_string(PolicyKind kind);
std::optional<PolicyKind> parse_policy(std::string_view name);
// Every policy's name, in declaration order: what clients may send as
// "foreshore/<name>".
std::vector<std::string_view> policy_names();

// What the router knows about one tier.
struct TierProfile {
  std::string name;
  bool on_device = false;
  // Highest data class this tier may receive. Device tiers take everything;
  // cloud tiers take public and prefer-local data unless configured otherwise.
  DataClass max_data_class = DataClass::kPreferLocal;
  double price_input_per_mtok = 0.0;
  double price_output_per_mtok = 0.0;
  int32_t context_length = 0;  // 0: unknown / large
  // Prior latency model, replaced by measurements as traffic flows.
  double prior_ttft_ms = 0.0;
  double prior_ms_per_token = 0.0;
  // Expected answer quality in [0, 1] for the optimize policy; the edge's is
  // scaled down by the complexity signal.
  double quality = 0.9;
};

// What has been measured of one tier: the learned latencies and how many
// measurements are behind them (replicas pool these, hybrid/latency_sharing.h).
struct LatencySummary {
  double ttft_ms = 0.0;
  double ms_per_token = 0.0;
  double weight = 0.0;  // measurements the figures stand for; 0: none
};

// Latency learned online per tier: EWMA of time to first token and of time
// per output token, plus a small sliding window for quantiles. Lock-free reads.
// The other replicas' measurements (set_peers), when there are any, are
// pooled with this process's own by the measurements behind each.
class TierLatency {
 public:
  explicit TierLatency(double prior_ttft_ms = 0.0, double prior_ms_per_token = 0.0);
  void record(double ttft_ms, double total_ms, int32_t output_tokens);
  double ttft_ms() const;
  double ms_per_token() const;
  // p-quantile of recent TTFTs (0 when none recorded).
  double ttft_quantile(double p) const;
  int64_t samples() const { return samples_.load(std::memory_order_relaxed); }
  // This process's own measurements, weighted by what its EWMA remembers.
  LatencySummary own() const;
  void set_peers(const LatencySummary& peers);

 private:
  std::atomic<double> ttft_ms_;
  std::atomic<double> ms_per_token_;
  std::atomic<int64_t> samples_{0};
  std::atomic<double> peer_ttft_ms_{0.0};
  std::atomic<double> peer_ms_per_token_{0.0};
  std::atomic<double> peer_weight_{0.0};
  mutable std::mutex window_mu_;
  std::vector<double> window_;
  size_t next_ = 0;
};

struct CascadeSettings {
  // Escalate when any crosses its threshold, measured on the edge answer.
  double min_mean_logprob = -2.0;
  double min_token_logprob = -9.0;
  double max_mean_entropy = 3.0;
  // Streaming: tokens held back before the escalation decision.
  int32_t hold_back_tokens = 8;
};

// Online learning from the deployment's own labels (route/online_learner.h).
struct LearningConfig {
  bool enabled = false;
  std::string state;  // state file, versioned beside itself; empty: not kept across restarts
  std::optional<double> target_cloud_share;  // recalibrate the threshold to it; absent: keep
  int64_t save_every_labels = 100;
  // The learner's similarity-weighted estimate (route/online_learner.h).
  bool neighbours = LearnerOptions{}.neighbours;
  bool form_features = LearnerOptions{}.form_features;
  size_t neighbour_k = LearnerOptions{}.neighbour_k;
  double neighbour_gamma = LearnerOptions{}.neighbour_gamma;
  double neighbour_prior = LearnerOptions{}.neighbour_prior;
  bool operator==(const LearningConfig&) const = default;
};

// Read from the gateway YAML's routing: and privacy: sections by
// hybrid/config.h (router_config_from_yaml).
struct RouterConfig {
  PolicyKind default_policy = PolicyKind::kThreshold;
  std::string edge_tier;   // empty: the first device tier
  std::string cloud_tier;  // empty: the first cloud tier
  // Path of the complexity model; empty: the shipped default when present;
  // "none": no model (complexity reads 0, routing by rules and policy only).
  std::string complexity_model;
  std::optional<double> threshold;  // overrides the model file's threshold
  CascadeSettings cascade;
  double consistency_min_similarity = 0.5;
  double optimize_cost_weight = 1000.0;     // lambda: quality units per dollar
  double optimize_latency_weight = 0.0005;  // mu: quality units per millisecond
  LearningConfig learning;
  int32_t default_max_tokens = 256;  // expected output when the request sets none
  SensitivityConfig privacy;
};

// One request as the router sees it: text and hints, no sampling details.
struct RouteInput {
  std::span<const std::string_view> texts;  // every message's content
  std::optional<DataClass> declared_class;
  std::optional<double> latency_budget_ms;  // to first token
  std::optional<double> cost_ceiling_usd;
  std::optional<std::string> forced_tier;
  // With a forced tier (a model alias): tiers to try in order when it fails.
  std::vector<std::string> fallback_tiers;
  // The forced tier came from a session pin or a model alias, not from the
  // client naming the tier: a step the data class forbids is dropped and the
  // next allowed one serves (routing decides when none is left), where a
  // tier the client named is refused outright.
  bool forced_is_preference = false;
  std::optional<PolicyKind> policy;  // from model "foreshore/<policy>"; else the default
  std::optional<int32_t> max_tokens;
  // A feature of the request that device tiers cannot honour ("tools",
  // "response_format json_schema"): their answer would silently ignore it, so
  // it needs a cloud tier. Empty when the edge can serve the request as asked.
  std::string_view edge_unsupported;
  // Tokens of the prompt when the caller counted them; else estimated from length.
  std::optional<int32_t> prompt_tokens;
  // Device state sampled by the caller.
  int32_t memory_pressure = 0;  // 0 none, 1 some, 2 high, 3 critical
  bool edge_available = true;   // edge loaded and not out of slots
  // Requests running or queued on the edge engine: without edge_load, each
  // adds one expected generation to the edge's time to first token.
  int32_t edge_queue_depth = 0;
  // The edge engine's measured load (continuous batching); when it has a
  // measured step time, the edge's TTFT is predicted from it instead.
  struct EdgeLoad {
    int32_t running = 0;  // requests holding a slot
    int32_t queued = 0;   // requests waiting for one
    int32_t slots = 0;
    int64_t queued_prompt_tokens = 0;
    double decode_step_ms = 0.0;        // one token for every running sequence; 0: unmeasured
    double prefill_ms_per_token = 0.0;  // prompt loading; 0: unmeasured
  };
  std::optional<EdgeLoad> edge_load;
  bool cloud_available = true;  // breaker closed or half-open
};

enum class PlanKind { kEdge, kCloud, kCascade, kConsistency, kReject };
std::string_view to_string(PlanKind kind);

struct Plan {
  PlanKind kind = PlanKind::kEdge;
  std::string edge_tier;
  std::string cloud_tier;
  // False whenever the data may not leave the device: the executor must never
  // call a cloud tier for this request, on any path (fallback, retry, shadow).
  bool cloud_allowed = false;
  // The edge may serve a degraded answer when the cloud fails.
  bool edge_fallback_allowed = true;
  // The client named the tier: its own answer or error is passed through,
  // without retries or fallbacks to another tier.
  bool forced = false;
  // Tiers a forced plan falls back to, in order, when its tier fails before
  // any output (a model alias's fallback chain). Only tiers the rules allow
  // for this request's data are listed: this list is what the executor may call.
  std::vector<std::string> fallback_tiers;
  CascadeSettings cascade;
  double consistency_min_similarity = 0.5;  // keep the edge answer at or above this
  double predicted_cost_usd = 0.0;
  double predicted_ttft_ms = 0.0;
  double predicted_quality = 0.0;
  std::string reason;  // why this plan (or why it was rejected)
};

struct Signals {
  SensitivityResult sensitivity;
  double complexity = 0.0;  // P(edge answer inadequate)
  double complexity_threshold = 0.5;
  int32_t prompt_tokens = 0;
  bool prompt_tokens_estimated = true;
  int32_t expected_output_tokens = 0;
  int32_t edge_context = 0;
  bool fits_edge_context = true;
  std::string edge_unsupported;  // RouteInput::edge_unsupported
  int32_t memory_pressure = 0;
  int32_t edge_queue_depth = 0;
  bool edge_available = true;
  bool cloud_available = true;
  double edge_ttft_ms = 0.0, cloud_ttft_ms = 0.0;
  double edge_cost_usd = 0.0, cloud_cost_usd = 0.0;
  std::optional<double> latency_budget_ms;
  std::optional<double> cost_ceiling_usd;
};

struct Decision {
  std::string id;
  PolicyKind policy = PolicyKind::kThreshold;
  Signals signals;
  std::vector<std::string> rules_fired;
  Plan plan;
  std::vector<Plan> alternatives;  // the other candidates, with why not
  double decision_us = 0.0;        // time taken to decide
};

// The decision as JSON, without any raw text (safe for logs).
void to_json(nlohmann::json& out, const Decision& decision);

class Router {
 public:
  static Result<std::unique_ptr<Router>> create(RouterConfig config,
                                                std::vector<TierProfile> tiers);
  ~Router();

  Decision decide(const RouteInput& input) const;

  // Feeds measured latency back (called by the executor after each request).
  void record_latency(std::string_view tier, double ttft_ms, double total_ms,
                      int32_t output_tokens);
  // Per tier, what this process measured itself, and what the other
  // replicas measured (pooled with it in every prediction after).
  std::vector<std::pair<std::string, LatencySummary>> own_latency() const;
  void set_peer_latency(std::string_view tier, const LatencySummary& peers);
  // Shadow evaluation may move the complexity threshold to hold agreement.
  void set_threshold(double threshold);
  double threshold() const;

  const RouterConfig& config() const { return config_; }
  const std::vector<TierProfile>& tiers() const { return tiers_; }
  const SensitivityDetector& sensitivity() const { return *sensitivity_; }
  const ComplexityModel* complexity() const { return complexity_ ? &*complexity_ : nullptr; }

  // The deployment's online learner over the complexity model: once set,
  // decisions score with it, and its threshold replaces the model's when it
  // recalibrates (a target cloud share). Safe to call while deciding.
  void set_learner(std::shared_ptr<OnlineLearner> learner);
  std::shared_ptr<OnlineLearner> learner() const { return learner_.load(); }

 private:
  Router() = default;
  const TierProfile* tier(std::string_view name) const;
  TierLatency* latency(std::string_view name) const;

  RouterConfig config_;
  std::vector<TierProfile> tiers_;
  std::vector<std::unique_ptr<TierLatency>> latency_;
  std::unique_ptr<SensitivityDetector> sensitivity_;
  std::optional<ComplexityModel> complexity_;
  std::atomic<double> threshold_{0.5};
  std::atomic<std::shared_ptr<OnlineLearner>> learner_;
  mutable std::atomic<uint64_t> decisions_{0};
};

// Where the shipped complexity model lives: router/complexity-default.json in
// the first of shipped_data_dirs() (common/install_paths.h) that holds it.
std::string default_complexity_model_path();

}  // namespace foreshore::route
