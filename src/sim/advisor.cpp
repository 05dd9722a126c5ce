// The decision framework: hybrid is justified when at least two of four
// conditions hold for the workload (docs/SIMULATOR.md).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "sim/sim.h"

namespace foreshore::sim {
namespace {

std::string format(const char* fmt, auto... args) {
  char buf[640];
  std::snprintf(buf, sizeof buf, fmt, args...);
  return buf;
}

double pct(int64_t part, int64_t whole) {
  return whole > 0 ? 100.0 * static_cast<double>(part) / static_cast<double>(whole) : 0.0;
}

Criterion latency_criterion(const Simulator& sim, const PolicyReport& cloud,
                            const PolicyReport& edge, const AdviceOptions& o) {
  int64_t tight = 0;
  for (const auto& r : sim.trace())
    tight += r.latency_budget_ms && *r.latency_budget_ms < o.tight_budget_ms;
  const int64_t n = static_cast<int64_t>(sim.trace().size());
  Criterion c;
  c.name = "latency budget under " + format("%.0f", o.tight_budget_ms) + " ms";
  c.holds =
      n > 0 && static_cast<double>(tight) >= o.tight_budget_min_share * static_cast<double>(n);
  c.evidence = format(
      "%lld of %lld requests (%.1f%%) have a budget under %.0f ms (holds from %.0f%%); modelled "
      "TTFT p50: cloud %.0f ms, edge %.0f ms",
      static_cast<long long>(tight), static_cast<long long>(n), pct(tight, n), o.tight_budget_ms,
      o.tight_budget_min_share * 100, cloud.cloud_ttft_ms.p50, edge.edge_ttft_ms.p50);
  return c;
}

Criterion privacy_criterion(const Simulator& sim, const PolicyReport& any) {
  int64_t declared = 0, detected = 0;
  for (size_t i = 0; i < sim.trace().size(); ++i) {
    const bool said = sim.trace()[i].data_class == route::DataClass::kDeviceOnly;
    declared += said;
    detected += !said && any.outcomes[i].data_class == route::DataClass::kDeviceOnly;
  }
  const int64_t n = static_cast<int64_t>(sim.trace().size());
  Criterion c;
  c.name = "data that may not leave the device";
  c.holds = declared + detected > 0;
  c.evidence = format(
      "%lld requests (%.1f%%) are device-only: %lld declared, %lld found by the sensitivity "
      "scanner; no cloud-only deployment may serve them",
      static_cast<long long>(declared + detected), pct(declared + detected, n),
      static_cast<long long>(declared), static_cast<long long>(detected));
  return c;
}

Criterion volume_criterion(const Simulator& sim, const PolicyReport& any, const AdviceOptions& o,
                           Advice& advice) {
  Criterion c;
  c.name = "high, steady volume";
  double first = 1e300, last = -1e300, in = 0, out = 0;
  for (size_t i = 0; i < sim.trace().size(); ++i) {
    first = std::min(first, sim.trace()[i].arrival_s);
    last = std::max(last, sim.trace()[i].arrival_s);
    in += any.outcomes[i].prompt_tokens;
    out += any.outcomes[i].output_tokens;
  }
  if (o.api_usd_per_mtok) {
    advice.api_usd_per_mtok = *o.api_usd_per_mtok;
  } else {
    const auto& tiers = sim.router().tiers();
    for (const auto& t : tiers) {
      if (t.name == sim.cloud_tier() && in + out > 0) {
        advice.api_usd_per_mtok =
            (t.price_input_per_mtok * in + t.price_output_per_mtok * out) / (in + out);
      }
    }
  }
  const double duration = last - first;
  if (!(duration > 0) || advice.api_usd_per_mtok <= 0) {
    c.evidence = duration > 0 ? "the cloud tier has no price; give --api-usd-per-mtok"
                              : "the trace has no time span (all 't' equal), so volume is unknown";
    return c;
  }
  // Whole hours when the trace spans some; otherwise the span in one piece.
  const int buckets = std::max(1, static_cast<int>(std::lround(duration / 3600.0)));
  const double width = duration / buckets;
  std::vector<double> tokens(static_cast<size_t>(buckets), 0.0);
  for (size_t i = 0; i < sim.trace().size(); ++i) {
    const int b =
        std::min(buckets - 1, static_cast<int>((sim.trace()[i].arrival_s - first) / width));
    tokens[static_cast<size_t>(b)] += any.outcomes[i].prompt_tokens + any.outcomes[i].output_tokens;
  }
  const double mean_rate = (in + out) / duration;
  const double peak_rate = *std::max_element(tokens.begin(), tokens.end()) / width;
  advice.gpus_for_peak =
      static_cast<int32_t>(std::max(1.0, std::ceil(peak_rate / o.gpu_tokens_per_s)));
  advice.sustained_utilization = mean_rate / (advice.gpus_for_peak * o.gpu_tokens_per_s);
  advice.break_even_utilization =
      o.gpu_usd_per_hour / (3600.0 * o.gpu_tokens_per_s * advice.api_usd_per_mtok / 1e6);
  c.holds = advice.break_even_utilization <= 1.0 &&
            advice.sustained_utilization >= advice.break_even_utilization;
  c.evidence = format(
      "%.1f tokens/s on average, %.1f at the busiest of %d %s (peak/mean %.2f); %d GPU(s) of "
      "%.0f tokens/s for the peak would run at %.1f%% sustained utilization. At $%.2f/GPU-hour "
      "against the API's $%.3f per million tokens a GPU breaks even at %.0f%% utilization "
      "(rule of thumb: ~70%%)",
      mean_rate, peak_rate, buckets, buckets == 1 ? "period" : "periods", peak_rate / mean_rate,
      advice.gpus_for_peak, o.gpu_tokens_per_s, advice.sustained_utilization * 100,
      o.gpu_usd_per_hour, advice.api_usd_per_mtok, advice.break_even_utilization * 100);
  return c;
}

// "Low" and "medium" are read as "below the threshold": the model's score is
// the probability that the edge answer falls short, and how tightly its
// scores bunch depends on the model, so fixed bands inside [0, threshold)
// would say more about the model than about the traffic.
Criterion complexity_criterion(const PolicyReport& threshold_run) {
  std::vector<double> scores;
  scores.reserve(threshold_run.outcomes.size());
  int64_t below = 0;
  for (const auto& o : threshold_run.outcomes) {
    scores.push_back(o.complexity);
    below += o.complexity < threshold_run.threshold;
  }
  const int64_t n = threshold_run.requests;
  Criterion c;
  c.name = "most queries low-to-medium complexity";
  c.holds = 2 * below > n;
  std::sort(scores.begin(), scores.end());
  auto quantile = [&](double q) {
    return scores.empty() ? 0.0 : scores[static_cast<size_t>(q * (scores.size() - 1))];
  };
  c.evidence = format(
      "by the router's complexity model: %.1f%% of requests score below its threshold %.3f "
      "(low to medium: the edge may take them), %.1f%% above; scores p10 / median / p90 "
      "%.3f / %.3f / %.3f",
      pct(below, n), threshold_run.threshold, pct(n - below, n), quantile(0.1), quantile(0.5),
      quantile(0.9));
  return c;
}

}  // namespace

Advice advise(Simulator& sim, const AdviceOptions& o) {
  Advice a;
  const PolicyReport threshold = sim.run(route::PolicyKind::kThreshold);
  const PolicyReport cloud = sim.run(route::PolicyKind::kCloud);
  const PolicyReport edge = sim.run(route::PolicyKind::kEdge);
  a.criteria.push_back(latency_criterion(sim, cloud, edge, o));
  a.criteria.push_back(privacy_criterion(sim, threshold));
  a.criteria.push_back(volume_criterion(sim, threshold, o, a));
  a.criteria.push_back(complexity_criterion(threshold));
  for (const auto& c : a.criteria) a.holding += c.holds;
  a.hybrid_justified = a.holding >= 2;

  a.candidates = sim.sweep(o.sweep_points);
  a.candidates.push_back(sim.run(route::PolicyKind::kCascade));
  a.candidates.push_back(sim.run(route::PolicyKind::kOptimize));

  const bool scored = threshold.quality.has_value();
  const PolicyReport* best = nullptr;
  if (scored) {
    for (const auto& c : a.candidates) {
      if (c.privacy_violations > 0 || !c.quality) continue;
      if (*c.quality < o.min_quality_vs_cloud * *c.cloud_only_quality) continue;
      if (best == nullptr || c.cost_usd < best->cost_usd ||
          (c.cost_usd == best->cost_usd && c.ttft_ms.p95 < best->ttft_ms.p95)) {
        best = &c;
      }
    }
  }
  std::string why;
  if (!a.hybrid_justified) {
    const bool local_need = a.criteria[0].holds || a.criteria[1].holds;
    a.start_policy = a.criteria[0].holds ? "edge" : "cloud";
    why = format(
        "Only %d of 4 conditions hold, so hybrid routing is not justified: a single "
        "tier is simpler to run. Start with policy %s",
        a.holding, a.start_policy.c_str());
    if (local_need && a.start_policy == "cloud") {
      why += "; the router's rules still keep device-only requests on the edge under it";
    }
    why += ".";
  } else if (best != nullptr) {
    a.start_policy = std::string(route::to_string(best->policy));
    if (best->policy == route::PolicyKind::kThreshold) a.start_threshold = best->threshold;
    why = format(
        "%d of 4 conditions hold: hybrid is justified. Start with %s: the cheapest setting "
        "that keeps at least %.0f%% of cloud-only quality on this trace (quality %.3f vs %.3f, "
        "cost $%.4f vs $%.4f cloud-only, %.1f%% saved, cloud share %.1f%%, TTFT p95 %.0f ms).",
        a.holding, best->label.c_str(), o.min_quality_vs_cloud * 100, *best->quality,
        *best->cloud_only_quality, best->cost_usd, best->cloud_only_cost_usd, best->saved_pct,
        best->cloud_share * 100, best->ttft_ms.p95);
  } else {
    a.start_policy = "threshold";
    a.start_threshold = threshold.threshold;
    why = format(
        "%d of 4 conditions hold: hybrid is justified. Start with policy threshold at "
        "the complexity model's threshold %.3f (cloud share %.1f%%, %.1f%% saved). ",
        a.holding, threshold.threshold, threshold.cloud_share * 100, threshold.saved_pct);
    why += scored ? format(
                        "No setting tried reaches %.0f%% of cloud-only quality; raise the "
                        "cloud share or improve the edge model.",
                        o.min_quality_vs_cloud * 100)
                  : "The trace has no quality scores: add {\"scores\": {\"edge\": x, \"cloud\": "
                    "y}} to check the quality cost and pick the threshold from the sweep.";
  }
  a.recommendation = why;
  if (threshold.requests < o.min_requests) {
    a.sample_warning = format(
        "Only %lld requests: too few to trust these figures (shares and p95/p99 move with a "
        "few requests; at least %lld are needed). Treat the verdict as a hint and replay a "
        "longer trace of your traffic.",
        static_cast<long long>(threshold.requests), static_cast<long long>(o.min_requests));
  }
  return a;
}

std::string format_advice(const Advice& a) {
  std::string s;
  if (!a.sample_warning.empty()) s += "WARNING: " + a.sample_warning + "\n\n";
  s += "Decision framework: hybrid is justified when at least two conditions hold.\n";
  for (const auto& c : a.criteria) {
    s += std::string(c.holds ? "  [holds]    " : "  [no]       ") + c.name + "\n             " +
         c.evidence + "\n";
  }
  s += "\n" + a.recommendation + "\n";
  if (a.start_threshold) {
    s += format("Configure: routing: {policy: %s, threshold: %.4f}\n", a.start_policy.c_str(),
                *a.start_threshold);
  } else {
    s += "Configure: routing: {policy: " + a.start_policy + "}\n";
  }
  return s;
}

}  // namespace foreshore::sim
