#include "route/router.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <span>

#include "common/install_paths.h"

namespace foreshore::route {
namespace {

// The plans every decision builds, in PlanKind order so that a plan's kind
// is its index: a policy picks one of them.
constexpr std::array<PlanKind, 4> kCandidateKinds{PlanKind::kEdge, PlanKind::kCloud,
                                                  PlanKind::kCascade, PlanKind::kConsistency};
static_assert(static_cast<size_t>(PlanKind::kConsistency) + 1 == kCandidateKinds.size());

Plan candidate(std::span<const Plan> candidates, PlanKind kind) {
  return candidates[static_cast<size_t>(kind)];
}

// A policy: picks one of the candidates (all of which the rules allow when
// it runs) and says why.
using PolicyFn = Plan (*)(std::span<const Plan> candidates, const Signals& signals,
                          const RouterConfig& config);

Plan choose_edge(std::span<const Plan> candidates, const Signals&, const RouterConfig&) {
  Plan chosen = candidate(candidates, PlanKind::kEdge);
  chosen.reason = "policy edge";
  return chosen;
}

Plan choose_cloud(std::span<const Plan> candidates, const Signals&, const RouterConfig&) {
  Plan chosen = candidate(candidates, PlanKind::kCloud);
  chosen.reason = "policy cloud";
  return chosen;
}

Plan choose_by_threshold(std::span<const Plan> candidates, const Signals& s, const RouterConfig&) {
  const bool hard = s.complexity >= s.complexity_threshold;
  Plan chosen = candidate(candidates, hard ? PlanKind::kCloud : PlanKind::kEdge);
  chosen.reason = "complexity " + std::to_string(s.complexity).substr(0, 5) +
                  (hard ? " >= " : " < ") + "threshold " +
                  std::to_string(s.complexity_threshold).substr(0, 5);
  return chosen;
}

Plan choose_cascade(std::span<const Plan> candidates, const Signals&, const RouterConfig&) {
  Plan chosen = candidate(candidates, PlanKind::kCascade);
  chosen.reason =
      "policy cascade: edge first, escalate when its log-probabilities say it is unsure";
  return chosen;
}

Plan choose_consistency(std::span<const Plan> candidates, const Signals&, const RouterConfig&) {
  Plan chosen = candidate(candidates, PlanKind::kConsistency);
  chosen.reason = "policy consistency: run both, keep the edge answer when they agree";
  return chosen;
}

// The plan of highest utility: quality less weighted cost and latency. Running
// both tiers is never worth it by this measure, so consistency is left out.
Plan choose_by_utility(std::span<const Plan> candidates, const Signals&,
                       const RouterConfig& config) {
  Plan chosen;
  double best = -1e300;
  for (const Plan& p : candidates) {
    if (p.kind == PlanKind::kConsistency) continue;
    const double u = p.predicted_quality - config.optimize_cost_weight * p.predicted_cost_usd -
                     config.optimize_latency_weight * p.predicted_ttft_ms;
    if (u > best) {
      best = u;
      chosen = p;
    }
  }
  chosen.reason = "optimize: highest quality - " + std::to_string(config.optimize_cost_weight) +
                  "*cost - " + std::to_string(config.optimize_latency_weight) + "*latency";
  return chosen;
}

struct Policy {
  PolicyKind kind;
  std::string_view name;
  PolicyFn choose;
};

constexpr std::array<Policy, 6> kPolicies{{
    {PolicyKind::kThreshold, "threshold", choose_by_threshold},
    {PolicyKind::kCascade, "cascade", choose_cascade},
    {PolicyKind::kConsistency, "consistency", choose_consistency},
    {PolicyKind::kOptimize, "optimize", choose_by_utility},
    {PolicyKind::kEdge, "edge", choose_edge},
    {PolicyKind::kCloud, "cloud", choose_cloud},
}};

const Policy& policy_of(PolicyKind kind) {
  for (const Policy& p : kPolicies) {
    if (p.kind == kind) return p;
  }
  return kPolicies.front();
}

constexpr size_t kLatencyWindow = 256;

}  // namespace

std::string_view to_string(PolicyKind kind) {
  return policy_of(kind).name;
}

std::optional<PolicyKind> parse_policy(std::string_view name) {
  for (const Policy& p : kPolicies) {
    if (p.name == name) return p.kind;
  }
  return std::nullopt;
}

std::vector<std::string_view> policy_names() {
  std::vector<std::string_view> names;
  for (const Policy& p : kPolicies) names.push_back(p.name);
  return names;
}

std::string_view to_string(PlanKind kind) {
  switch (kind) {
    case PlanKind::kEdge:
      return "edge";
    case PlanKind::kCloud:
      return "cloud";
    case PlanKind::kCascade:
      return "cascade";
    case PlanKind::kConsistency:
      return "consistency";
    case PlanKind::kReject:
      return "reject";
  }
  return "edge";
}

TierLatency::TierLatency(double prior_ttft_ms, double prior_ms_per_token)
    : ttft_ms_(prior_ttft_ms), ms_per_token_(prior_ms_per_token) {
  window_.reserve(kLatencyWindow);
}

void TierLatency::record(double ttft_ms, double total_ms, int32_t output_tokens) {
  // The first measurement replaces the prior outright; later ones blend in.
  const bool first = samples_.fetch_add(1, std::memory_order_relaxed) == 0;
  const double alpha = first ? 1.0 : 0.2;
  ttft_ms_.store(ttft_ms_.load() * (1 - alpha) + ttft_ms * alpha, std::memory_order_relaxed);
  if (output_tokens > 1) {
    const double per_token = std::max(0.0, total_ms - ttft_ms) / (output_tokens - 1);
    ms_per_token_.store(ms_per_token_.load() * (1 - alpha) + per_token * alpha,
                        std::memory_order_relaxed);
  }
  std::lock_guard lock(window_mu_);
  if (window_.size() < kLatencyWindow) {
    window_.push_back(ttft_ms);
  } else {
    window_[next_] = ttft_ms;
    next_ = (next_ + 1) % kLatencyWindow;
  }
}

namespace {

// An EWMA with alpha 0.2 rests on about its last ten measurements: more of
// them count no more when one replica's figure is pooled with another's.
constexpr double kEwmaMemory = 10.0;

double pooled(double own, double own_weight, double peer, double peer_weight) {
  if (peer_weight <= 0.0) return own;
  return (own * own_weight + peer * peer_weight) / (own_weight + peer_weight);
}

}  // namespace

LatencySummary TierLatency::own() const {
  return LatencySummary{ttft_ms_.load(std::memory_order_relaxed),
                        ms_per_token_.load(std::memory_order_relaxed),
                        std::min(kEwmaMemory, static_cast<double>(samples()))};
}

void TierLatency::set_peers(const LatencySummary& peers) {
  peer_ttft_ms_.store(peers.ttft_ms, std::memory_order_relaxed);
  peer_ms_per_token_.store(peers.ms_per_token, std::memory_order_relaxed);
  peer_weight_.store(peers.weight, std::memory_order_relaxed);
}

double TierLatency::ttft_ms() const {
  return pooled(ttft_ms_.load(std::memory_order_relaxed), own().weight,
                peer_ttft_ms_.load(std::memory_order_relaxed),
                peer_weight_.load(std::memory_order_relaxed));
}

double TierLatency::ms_per_token() const {
  return pooled(ms_per_token_.load(std::memory_order_relaxed), own().weight,
                peer_ms_per_token_.load(std::memory_order_relaxed),
                peer_weight_.load(std::memory_order_relaxed));
}

double TierLatency::ttft_quantile(double p) const {
  std::vector<double> copy;
  {
    std::lock_guard lock(window_mu_);
    copy = window_;
  }
  if (copy.empty()) return 0.0;
  const size_t k =
      std::min(copy.size() - 1, static_cast<size_t>(p * static_cast<double>(copy.size())));
  std::nth_element(copy.begin(), copy.begin() + static_cast<std::ptrdiff_t>(k), copy.end());
  return copy[k];
}

std::string default_complexity_model_path() {
  const std::string rel = "router/complexity-default.json";
  // Not found anywhere: the path named in the error is the working directory's.
  return find_shipped_file(rel).value_or("data/" + rel);
}

Result<std::unique_ptr<Router>> Router::create(RouterConfig config,
                                               std::vector<TierProfile> tiers) {
  std::unique_ptr<Router> r(new Router());
  auto detector = SensitivityDetector::create(config.privacy);
  if (!detector.ok()) return detector.error();
  r->sensitivity_ = std::move(detector).value();

  const bool no_model = config.complexity_model == "none";
  const bool explicit_model = !config.complexity_model.empty() && !no_model;
  const std::string path =
      explicit_model ? config.complexity_model : default_complexity_model_path();
  std::error_code ec;
  if (!no_model && !explicit_model && !std::filesystem::exists(path, ec)) {
    // Routing on complexity 0 would send everything to the edge unnoticed.
    std::string looked;
    for (const auto& dir : shipped_data_dirs()) {
      looked += (looked.empty() ? "" : ", ") + dir.string();
    }
    return make_error(ErrorKind::kNotFound,
                      "the shipped complexity model router/complexity-default.json is not in any "
                      "of the data folders (" +
                          looked +
                          "); set FORESHORE_DATA_DIR to the folder that holds it (the checkout's "
                          "data/, or <prefix>/share/foreshore when installed), or set "
                          "routing.complexity_model to a model file, or to none to route by "
                          "rules and policy only");
  }
  if (!no_model) {
    auto model = ComplexityModel::load(path);
    if (!model.ok()) return model.error();
    r->complexity_ = std::move(model).value();
    r->threshold_.store(config.threshold.value_or(r->complexity_->threshold()));
  } else {
    r->threshold_.store(config.threshold.value_or(0.5));
  }

  for (const auto& name : {config.edge_tier, config.cloud_tier}) {
    if (name.empty()) continue;
    if (std::none_of(tiers.begin(), tiers.end(),
                     [&](const TierProfile& t) { return t.name == name; })) {
      return make_error(ErrorKind::kInvalidArgument,
                        "routing: tier '" + name + "' is not configured under tiers");
    }
  }
  // The rules trust the edge to keep prefer-local data on the device. (The
  // cloud's role may go to a device tier: a LAN server, examples/ollama.yaml.)
  if (!config.edge_tier.empty() &&
      std::none_of(tiers.begin(), tiers.end(), [&](const TierProfile& t) {
        return t.name == config.edge_tier && t.on_device;
      })) {
    return make_error(ErrorKind::kInvalidArgument,
                      "routing.edge_tier: tier '" + config.edge_tier +
                          "' is a cloud tier; name a device tier (kind: embedded, or "
                          "placement: device)");
  }
  if (config.edge_tier.empty()) {
    for (const auto& t : tiers) {
      if (t.on_device) {
        config.edge_tier = t.name;
        break;
      }
    }
  }
  if (config.cloud_tier.empty()) {
    for (const auto& t : tiers) {
      if (!t.on_device) {
        config.cloud_tier = t.name;
        break;
      }
    }
  }
  for (const auto& t : tiers) {
    r->latency_.push_back(std::make_unique<TierLatency>(t.prior_ttft_ms, t.prior_ms_per_token));
  }
  r->config_ = std::move(config);
  r->tiers_ = std::move(tiers);
  return r;
}

Router::~Router() = default;

const TierProfile* Router::tier(std::string_view name) const {
  for (const auto& t : tiers_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

TierLatency* Router::latency(std::string_view name) const {
  for (size_t i = 0; i < tiers_.size(); ++i) {
    if (tiers_[i].name == name) return latency_[i].get();
  }
  return nullptr;
}

void Router::record_latency(std::string_view tier, double ttft_ms, double total_ms,
                            int32_t output_tokens) {
  if (TierLatency* l = latency(tier)) l->record(ttft_ms, total_ms, output_tokens);
}

std::vector<std::pair<std::string, LatencySummary>> Router::own_latency() const {
  std::vector<std::pair<std::string, LatencySummary>> out;
  for (size_t i = 0; i < tiers_.size(); ++i) out.emplace_back(tiers_[i].name, latency_[i]->own());
  return out;
}

void Router::set_peer_latency(std::string_view tier, const LatencySummary& peers) {
  if (TierLatency* l = latency(tier)) l->set_peers(peers);
}

void Router::set_threshold(double threshold) {
  threshold_.store(std::clamp(threshold, 0.0, 1.0));
}
void Router::set_learner(std::shared_ptr<OnlineLearner> learner) {
  learner_.store(std::move(learner));
}

double Router::threshold() const {
  return threshold_.load();
}

namespace {

const TierProfile* find_tier(std::span<const TierProfile> tiers, std::string_view name) {
  for (const auto& t : tiers) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

// The router's edge or cloud tier for a request (null when none is
// configured) and its measured latency.
struct TierView {
  const TierProfile* profile = nullptr;
  const TierLatency* latency = nullptr;
};

// What scores a request's text.
struct TextScorers {
  const SensitivityDetector& sensitivity;
  const ComplexityModel* complexity;  // null: no model, complexity reads 0
  std::shared_ptr<OnlineLearner> learner;
  double threshold = 0.5;
};

// --- signals: everything the rules and policies read, measured once.

void score_text(const RouteInput& in, const TextScorers& scorers, Signals& s) {
  s.sensitivity = scorers.sensitivity.scan(in.texts, in.declared_class);
  const std::string_view last = in.texts.empty() ? std::string_view() : in.texts.back();
  s.complexity_threshold = scorers.threshold;
  if (const auto& learner = scorers.learner) {
    ComplexityFeatures f = extract_complexity_features(last, learner->base().hashing());
    s.complexity = learner->score(f);
    if (learner->recalibrates()) {
      s.complexity_threshold = learner->threshold();
      learner->observe(std::move(f));  // never waits: dropped when the learner is busy
    }
  } else {
    s.complexity = scorers.complexity ? scorers.complexity->score(last) : 0.0;
  }
}

void count_tokens(const RouteInput& in, int32_t default_max_tokens, Signals& s) {
  if (in.prompt_tokens) {
    s.prompt_tokens = *in.prompt_tokens;
    s.prompt_tokens_estimated = false;
  } else {
    size_t bytes = 0;
    for (auto t : in.texts) bytes += t.size();
    // About four bytes per token for English under common vocabularies.
    s.prompt_tokens = static_cast<int32_t>(bytes / 4 + 4 * in.texts.size() + 1);
  }
  s.expected_output_tokens = in.max_tokens.value_or(default_max_tokens);
}

// A tier's time to first token and cost for this request, from its measured
// (else prior) latency and its prices.
void predict(TierView tier, const Signals& s, double& ttft, double& cost) {
  const TierProfile* t = tier.profile;
  if (t == nullptr) return;
  ttft = tier.latency ? tier.latency->ttft_ms() : t->prior_ttft_ms;
  cost = (t->price_input_per_mtok * s.prompt_tokens +
          t->price_output_per_mtok * s.expected_output_tokens) /
         1e6;
}

// The edge's time to first token behind the work already on it.
void add_edge_queue(const RouteInput& in, TierView edge, Signals& s) {
  if (edge.profile == nullptr) return;
  const bool measured_load = in.edge_load && in.edge_load->decode_step_ms > 0.0;
  if (measured_load && in.edge_load->running + in.edge_load->queued > 0) {
    // Continuous batching: a request starts at the next step while a slot is
    // free, else when enough running generations end; then its prompt loads
    // after the prompts queued before it, beside the running decodes.
    const RouteInput::EdgeLoad& l = *in.edge_load;
    const int32_t slots = std::max(1, l.slots);
    const int32_t ahead = l.running + l.queued - slots + 1;
    const double step = l.decode_step_ms;
    const double wait =
        ahead > 0 ? std::ceil(static_cast<double>(ahead) / slots) * s.expected_output_tokens * step
                  : 0.0;
    const double per_prompt_token = l.prefill_ms_per_token > 0.0 ? l.prefill_ms_per_token : step;
    s.edge_ttft_ms =
        wait + static_cast<double>(l.queued_prompt_tokens + s.prompt_tokens) * per_prompt_token +
        step;
  } else if (!measured_load && in.edge_queue_depth > 0) {
    const double per_token =
        edge.latency ? edge.latency->ms_per_token() : edge.profile->prior_ms_per_token;
    s.edge_ttft_ms += in.edge_queue_depth * (s.edge_ttft_ms + per_token * s.expected_output_tokens);
  }
}

Signals gather_signals(const RouteInput& in, const TextScorers& scorers, int32_t default_max_tokens,
                       TierView edge, TierView cloud) {
  Signals s;
  score_text(in, scorers, s);
  count_tokens(in, default_max_tokens, s);
  s.memory_pressure = in.memory_pressure;
  s.edge_unsupported = in.edge_unsupported;
  s.latency_budget_ms = in.latency_budget_ms;
  s.cost_ceiling_usd = in.cost_ceiling_usd;
  s.edge_available = edge.profile != nullptr && in.edge_available;
  s.cloud_available = cloud.profile != nullptr && in.cloud_available;
  predict(edge, s, s.edge_ttft_ms, s.edge_cost_usd);
  s.edge_queue_depth = in.edge_queue_depth;
  add_edge_queue(in, edge, s);
  predict(cloud, s, s.cloud_ttft_ms, s.cloud_cost_usd);
  if (const TierProfile* e = edge.profile) {
    s.edge_context = e->context_length;
    s.fits_edge_context =
        e->context_length <= 0 ||
        s.prompt_tokens + std::min(s.expected_output_tokens, 16) <= e->context_length;
  }
  return s;
}

// --- rules: hard constraints, before any policy.

// Which of the two tiers the rules leave open for this request, and why not.
struct Gates {
  DataClass data_class = DataClass::kPublic;
  bool edge_ok = false;
  bool cloud_ok = false;
  std::string edge_block;
  std::string cloud_block;
  // A feature of the request the edge cannot honour: it refuses a forced
  // device tier too, where the other edge blocks do not.
  std::string edge_lacks;

  // A cloud tier this request's data may not reach (device tiers take all).
  bool forbids(const TierProfile& t) const {
    return !t.on_device && (data_class == DataClass::kDeviceOnly || data_class > t.max_data_class);
  }
};

Gates gate_tiers(const Signals& s, const TierProfile* edge, const TierProfile* cloud,
                 std::vector<std::string>& rules_fired) {
  Gates g;
  g.data_class = s.sensitivity.data_class;
  g.cloud_ok = s.cloud_available;
  g.edge_ok = s.edge_available && s.fits_edge_context && s.edge_unsupported.empty();
  if (cloud != nullptr && g.data_class == DataClass::kDeviceOnly) {
    g.cloud_ok = false;
    g.cloud_block = "data classed device-only (" + s.sensitivity.rule + ") never leaves the device";
    rules_fired.push_back("device-only-stays-local");
  } else if (cloud != nullptr && g.data_class > cloud->max_data_class) {
    g.cloud_ok = false;
    g.cloud_block = "cloud tier '" + cloud->name + "' is not cleared for " +
                    std::string(to_string(g.data_class)) + " data";
    rules_fired.push_back("cloud-tier-not-cleared");
  }
  if (cloud == nullptr) g.cloud_block = "no cloud tier is configured";
  if (cloud != nullptr && !s.cloud_available) {
    if (g.cloud_block.empty()) g.cloud_block = "cloud tier '" + cloud->name + "' is unavailable";
    rules_fired.push_back("cloud-unavailable");
  }
  if (g.cloud_ok && s.cost_ceiling_usd && s.cloud_cost_usd > *s.cost_ceiling_usd) {
    g.cloud_ok = false;
    g.cloud_block = "cloud cost " + std::to_string(s.cloud_cost_usd) + " exceeds the ceiling";
    rules_fired.push_back("cost-ceiling");
  }
  if (edge == nullptr) {
    g.edge_block = "no device tier is configured";
  } else if (!s.edge_available) {
    g.edge_block = "edge tier '" + edge->name + "' cannot run (not loaded or out of memory)";
    rules_fired.push_back("edge-unavailable");
  } else if (!s.fits_edge_context) {
    g.edge_block = "prompt of ~" + std::to_string(s.prompt_tokens) + " tokens, with room for " +
                   std::to_string(std::min(s.expected_output_tokens, 16)) +
                   " tokens of answer, exceeds the edge context of " +
                   std::to_string(edge->context_length) + " tokens";
    rules_fired.push_back("edge-context-exceeded");
  }
  if (!s.edge_unsupported.empty()) {
    g.edge_lacks = "the request uses " + s.edge_unsupported +
                   ", which the embedded edge engine does not support (its answer would ignore "
                   "it); a cloud tier must serve it";
    if (g.edge_block.empty()) g.edge_block = g.edge_lacks;
    rules_fired.push_back("edge-lacks-feature");
  }
  return g;
}

// Builds the plans of one request, with their predictions.
class PlanMaker {
 public:
  PlanMaker(const Signals& s, const RouterConfig& config, const TierProfile* edge,
            const TierProfile* cloud, bool cloud_ok)
      : s_(s), config_(config), edge_(edge), cloud_(cloud), cloud_ok_(cloud_ok) {}

  Plan make(PlanKind kind) const {
    Plan p;
    p.kind = kind;
    p.edge_tier = edge_ ? edge_->name : "";
    p.cloud_tier = cloud_ ? cloud_->name : "";
    p.cloud_allowed = cloud_ok_;
    p.cascade = config_.cascade;
    p.consistency_min_similarity = config_.consistency_min_similarity;
    const double edge_total = s_.edge_ttft_ms;
    const double p_bad = s_.complexity;
    const double edge_quality = (edge_ ? edge_->quality : 0.0) * (1.0 - p_bad);
    const double cloud_quality = cloud_ ? cloud_->quality : 0.0;
    switch (kind) {
      case PlanKind::kEdge:
        p.predicted_cost_usd = s_.edge_cost_usd;
        p.predicted_ttft_ms = edge_total;
        p.predicted_quality = edge_quality;
        break;
      case PlanKind::kCloud:
        p.predicted_cost_usd = s_.cloud_cost_usd;
        p.predicted_ttft_ms = s_.cloud_ttft_ms;
        p.predicted_quality = cloud_quality;
        break;
      case PlanKind::kCascade:
        // Escalation happens about as often as the edge answer is inadequate.
        p.predicted_cost_usd = s_.edge_cost_usd + p_bad * s_.cloud_cost_usd;
        p.predicted_ttft_ms = edge_total + p_bad * s_.cloud_ttft_ms;
        p.predicted_quality = (1 - p_bad) * (edge_ ? edge_->quality : 0.0) + p_bad * cloud_quality;
        break;
      case PlanKind::kConsistency:
        p.predicted_cost_usd = s_.edge_cost_usd + s_.cloud_cost_usd;
        p.predicted_ttft_ms = std::max(edge_total, s_.cloud_ttft_ms);
        p.predicted_quality = std::max(edge_quality, cloud_quality);
        break;
      case PlanKind::kReject:
        break;
    }
    return p;
  }

  Plan reject(const std::string& why) const {
    Plan p = make(PlanKind::kReject);
    p.cloud_allowed = false;
    p.edge_fallback_allowed = false;
    p.reason = why;
    return p;
  }

 private:
  const Signals& s_;
  const RouterConfig& config_;
  const TierProfile* edge_;
  const TierProfile* cloud_;
  bool cloud_ok_;
};

// A tier the client (or a session pin or model alias) forced, honoured only
// within the rules; nothing when none was forced or a preferred chain lost
// every step.
std::optional<Plan> plan_forced_tier(const RouteInput& in, std::span<const TierProfile> tiers,
                                     const Gates& g, const PlanMaker& plans,
                                     std::vector<std::string>& rules_fired) {
  // A preferred chain loses the steps the data may not take; what is left
  // is honoured like a forced chain, and an empty one leaves it to routing.
  std::optional<std::string> forced_tier = in.forced_tier;
  std::vector<std::string> fallback_tiers = in.fallback_tiers;
  std::string dropped;  // why the chain lost steps, for a refusal's message
  if (forced_tier && in.forced_is_preference) {
    std::vector<std::string> chain{*forced_tier};
    chain.insert(chain.end(), fallback_tiers.begin(), fallback_tiers.end());
    std::vector<std::string> kept;
    for (const auto& name : chain) {
      const TierProfile* t = find_tier(tiers, name);
      if (t != nullptr && g.forbids(*t)) {
        rules_fired.push_back("preferred-tier-dropped");
        dropped += (dropped.empty() ? "" : ", ") + ("'" + name + "'");
        continue;
      }
      kept.push_back(name);
    }
    if (kept.empty()) return std::nullopt;
    forced_tier = kept.front();
    fallback_tiers.assign(kept.begin() + 1, kept.end());
  }
  if (!forced_tier) return std::nullopt;

  rules_fired.push_back(in.forced_is_preference ? "preferred-tier" : "forced-tier");
  const std::string who =
      (in.forced_is_preference ? "the model alias's or session's tier '" : "forced tier '") +
      *forced_tier + "'";
  const std::string why_dropped =
      dropped.empty()
          ? ""
          : " (its tier " + dropped + " may not receive this request's data: " +
                (g.cloud_block.empty() ? "its data class forbids it" : g.cloud_block) + ")";
  const TierProfile* f = find_tier(tiers, *forced_tier);
  if (f == nullptr) return plans.reject(who + " is not configured");
  if (g.forbids(*f)) {
    return plans.reject(
        who + " refused: " + (g.cloud_block.empty() ? "data class forbids it" : g.cloud_block));
  }
  if (f->on_device && !g.edge_lacks.empty()) {
    return plans.reject(who + " cannot serve this request: " + g.edge_lacks + why_dropped);
  }
  Plan chosen = plans.make(f->on_device ? PlanKind::kEdge : PlanKind::kCloud);
  if (f->on_device) {
    chosen.edge_tier = f->name;
    chosen.cloud_allowed = false;
  } else {
    chosen.cloud_tier = f->name;
    // The data class allows it (checked above); an open breaker or a cost
    // ceiling does not veto a tier the client named: its own error will.
    chosen.cloud_allowed = true;
  }
  chosen.forced = !in.forced_is_preference;
  chosen.edge_fallback_allowed = false;
  chosen.reason = in.forced_is_preference ? "the session or model alias prefers '" + f->name + "'"
                                          : "x-foreshore-tier forced '" + f->name + "'";
  for (const auto& name : fallback_tiers) {
    const TierProfile* t = find_tier(tiers, name);
    if (t == nullptr || name == f->name) continue;
    if (g.forbids(*t)) {
      rules_fired.push_back("fallback-tier-refused");
      continue;
    }
    if (t->on_device && !g.edge_lacks.empty()) continue;
    chosen.fallback_tiers.push_back(name);
  }
  return chosen;
}

// The rules that settle a request before any policy: a tier that cannot
// serve, data that prefers the device, memory pressure, a latency budget
// only one tier meets. Nothing when the policy is free to choose.
std::optional<Plan> plan_by_rules(const Signals& s, const Gates& g, const PlanMaker& plans,
                                  std::vector<std::string>& rules_fired) {
  if (!g.edge_ok && !g.cloud_ok) {
    return plans.reject("no tier can serve: edge: " + (g.edge_block.empty() ? "ok" : g.edge_block) +
                        "; cloud: " + (g.cloud_block.empty() ? "ok" : g.cloud_block));
  }
  if (!g.edge_ok) {
    Plan chosen = plans.make(PlanKind::kCloud);
    // An edge answer would be a degraded one, unless it ignores what was asked.
    chosen.edge_fallback_allowed = s.edge_available && g.edge_lacks.empty();
    chosen.reason = g.edge_block + ", so the cloud serves";
    return chosen;
  }
  if (!g.cloud_ok) {
    Plan chosen = plans.make(PlanKind::kEdge);
    chosen.reason = g.cloud_block.empty() ? "cloud not allowed" : g.cloud_block;
    return chosen;
  }
  if (g.data_class == DataClass::kPreferLocal) {
    rules_fired.push_back("prefer-local");
    Plan chosen = plans.make(PlanKind::kEdge);
    chosen.reason = "data classed prefer-local (" + s.sensitivity.rule + ") and the edge can serve";
    return chosen;
  }
  if (s.memory_pressure >= 2) {
    rules_fired.push_back("memory-pressure");
    Plan chosen = plans.make(PlanKind::kCloud);
    chosen.reason = "device memory pressure is high; the cloud serves what may go there";
    return chosen;
  }
  if (s.latency_budget_ms && s.cloud_ttft_ms > *s.latency_budget_ms &&
      s.edge_ttft_ms <= *s.latency_budget_ms) {
    rules_fired.push_back("latency-budget");
    Plan chosen = plans.make(PlanKind::kEdge);
    chosen.reason = "cloud TTFT ~" + std::to_string(static_cast<int>(s.cloud_ttft_ms)) +
                    " ms exceeds the budget; the edge fits it";
    return chosen;
  }
  if (s.latency_budget_ms && s.edge_ttft_ms > *s.latency_budget_ms &&
      s.cloud_ttft_ms <= *s.latency_budget_ms) {
    rules_fired.push_back("latency-budget");
    Plan chosen = plans.make(PlanKind::kCloud);
    chosen.reason = "edge TTFT ~" + std::to_string(static_cast<int>(s.edge_ttft_ms)) + " ms (" +
                    std::to_string(s.edge_queue_depth) +
                    " requests ahead) exceeds the budget; the cloud fits it";
    return chosen;
  }
  return std::nullopt;
}

// The candidates not chosen, each with why not.
std::vector<Plan> alternatives_to(std::vector<Plan> candidates, const Plan& chosen, const Gates& g,
                                  PolicyKind policy) {
  std::vector<Plan> alternatives;
  for (Plan& p : candidates) {
    if (p.kind == chosen.kind) continue;
    if ((p.kind != PlanKind::kEdge) && !g.cloud_ok) {
      p.reason = "not allowed: " + g.cloud_block;
    } else if (p.kind != PlanKind::kCloud && !g.edge_ok) {
      p.reason = "not possible: " + g.edge_block;
    } else {
      p.reason = "not chosen by " + std::string(to_string(policy));
    }
    alternatives.push_back(std::move(p));
  }
  return alternatives;
}

// "dec-<process tag>-<count>": unique across the replicas of a deployment.
std::string decision_id(std::atomic<uint64_t>& decisions) {
  static const uint64_t process_tag = std::random_device{}();
  char buf[40];
  std::snprintf(buf, sizeof buf, "dec-%08llx-%llx",
                static_cast<unsigned long long>(process_tag & 0xffffffffu),
                static_cast<unsigned long long>(decisions.fetch_add(1) + 1));
  return buf;
}

}  // namespace

Decision Router::decide(const RouteInput& in) const {
  const auto start = std::chrono::steady_clock::now();
  Decision d;
  d.id = decision_id(decisions_);
  d.policy = in.policy.value_or(config_.default_policy);

  const TierView edge{tier(config_.edge_tier), latency(config_.edge_tier)};
  const TierView cloud{tier(config_.cloud_tier), latency(config_.cloud_tier)};
  const TextScorers scorers{*sensitivity_, complexity(), learner_.load(), threshold()};
  d.signals = gather_signals(in, scorers, config_.default_max_tokens, edge, cloud);
  const Signals& s = d.signals;

  const Gates gates = gate_tiers(s, edge.profile, cloud.profile, d.rules_fired);
  const PlanMaker plans(s, config_, edge.profile, cloud.profile, gates.cloud_ok);
  std::optional<Plan> chosen = plan_forced_tier(in, tiers_, gates, plans, d.rules_fired);
  if (!chosen) chosen = plan_by_rules(s, gates, plans, d.rules_fired);

  std::vector<Plan> candidates;
  for (PlanKind k : kCandidateKinds) candidates.push_back(plans.make(k));
  if (!chosen) chosen = policy_of(d.policy).choose(candidates, s, config_);
  d.alternatives = alternatives_to(std::move(candidates), *chosen, gates, d.policy);
  d.plan = std::move(*chosen);
  // Belt and braces: whatever path led here, device-only data gets no cloud step.
  if (gates.data_class == DataClass::kDeviceOnly) {
    d.plan.cloud_allowed = false;
    if (d.plan.kind == PlanKind::kCloud || d.plan.kind == PlanKind::kCascade ||
        d.plan.kind == PlanKind::kConsistency) {
      d.plan = plans.reject("data classed device-only cannot be planned on a cloud tier");
    }
  }
  d.decision_us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count();
  return d;
}

void to_json(nlohmann::json& out, const Plan& p) {
  out = {{"kind", to_string(p.kind)},
         {"edge_tier", p.edge_tier},
         {"cloud_tier", p.cloud_tier},
         {"cloud_allowed", p.cloud_allowed},
         {"predicted_cost_usd", p.predicted_cost_usd},
         {"predicted_ttft_ms", p.predicted_ttft_ms},
         {"predicted_quality", p.predicted_quality},
         {"reason", p.reason}};
  if (p.forced) out["forced"] = true;
  if (!p.fallback_tiers.empty()) out["fallback_tiers"] = p.fallback_tiers;
}

void to_json(nlohmann::json& out, const Decision& d) {
  const Signals& s = d.signals;
  nlohmann::json sensitivity;
  to_json(sensitivity, s.sensitivity);
  nlohmann::json plan;
  to_json(plan, d.plan);
  nlohmann::json alternatives = nlohmann::json::array();
  for (const auto& a : d.alternatives) {
    nlohmann::json j;
    to_json(j, a);
    alternatives.push_back(std::move(j));
  }
  nlohmann::json signals = {
      {"sensitivity", std::move(sensitivity)},
      {"complexity", s.complexity},
      {"complexity_threshold", s.complexity_threshold},
      {"prompt_tokens", s.prompt_tokens},
      {"prompt_tokens_estimated", s.prompt_tokens_estimated},
      {"expected_output_tokens", s.expected_output_tokens},
      {"edge_context", s.edge_context},
      {"fits_edge_context", s.fits_edge_context},
      {"edge_unsupported", s.edge_unsupported},
      {"memory_pressure", s.memory_pressure},
      {"edge_available", s.edge_available},
      {"edge_queue_depth", s.edge_queue_depth},
      {"cloud_available", s.cloud_available},
      {"edge_ttft_ms", s.edge_ttft_ms},
      {"cloud_ttft_ms", s.cloud_ttft_ms},
      {"edge_cost_usd", s.edge_cost_usd},
      {"cloud_cost_usd", s.cloud_cost_usd},
  };
  if (s.latency_budget_ms) signals["latency_budget_ms"] = *s.latency_budget_ms;
  if (s.cost_ceiling_usd) signals["cost_ceiling_usd"] = *s.cost_ceiling_usd;
  out = {{"id", d.id},
         {"policy", to_string(d.policy)},
         {"signals", std::move(signals)},
         {"rules_fired", d.rules_fired},
         {"plan", std::move(plan)},
         {"alternatives", std::move(alternatives)},
         {"decision_us", d.decision_us}};
}

}  // namespace foreshore::route
