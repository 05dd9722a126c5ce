// Simulation output: the stdout table, JSON, the SVG figures and report.md.
#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "sim/sim.h"
#include "sim/svg.h"

namespace foreshore::sim {
namespace {

constexpr const char* kEdgeColor = "#2a9d4b";
constexpr const char* kCloudColor = "#1f5fbf";
constexpr const char* kEscalatedColor = "#e08a1e";
constexpr const char* kRejectedColor = "#999999";
constexpr const char* kPolicyColors[] = {"#c0392b", "#8e44ad", "#16a085",
                                         "#d35400", "#2c3e50", "#7f8c8d"};

std::string format(const char* fmt, auto... args) {
  char buf[512];
  std::snprintf(buf, sizeof buf, fmt, args...);
  return buf;
}

bool all_scored(std::span<const PolicyReport> reports) {
  return !reports.empty() &&
         std::all_of(reports.begin(), reports.end(), [](const auto& r) { return r.quality; });
}

double shown_quality(const PolicyReport& r) {
  return r.quality.value_or(r.predicted_quality);
}

nlohmann::json latency_json(const observe::LatencySummary& s) {
  return {{"count", s.count}, {"p50", s.p50}, {"p95", s.p95}, {"p99", s.p99}};
}

std::string quality_cell(const PolicyReport& r) {
  if (!r.quality) return "-";
  return format("%.3f", *r.quality);
}

std::string vs_cloud_cell(const PolicyReport& r) {
  if (!r.quality || !r.cloud_only_quality || *r.cloud_only_quality <= 0) return "-";
  return format("%.1f%%", 100.0 * *r.quality / *r.cloud_only_quality);
}

}  // namespace

TraceSummary summarize_trace(Simulator& sim) {
  TraceSummary t;
  const PolicyReport any = sim.run(route::PolicyKind::kEdge);
  t.requests = any.requests;
  double first = 1e300, last = -1e300;
  for (size_t i = 0; i < sim.trace().size(); ++i) {
    const TraceRecord& r = sim.trace()[i];
    first = std::min(first, r.arrival_s);
    last = std::max(last, r.arrival_s);
    t.with_scores += r.edge_quality && r.cloud_quality;
    ++t.data_class_counts[static_cast<int>(any.outcomes[i].data_class)];
    t.mean_prompt_tokens += any.outcomes[i].prompt_tokens;
    t.mean_output_tokens += any.outcomes[i].output_tokens;
  }
  if (t.requests > 0) {
    t.duration_s = last - first;
    t.mean_prompt_tokens /= static_cast<double>(t.requests);
    t.mean_output_tokens /= static_cast<double>(t.requests);
  }
  return t;
}

namespace {

// Why a policy named for one tier did not send everything there: "cloud"
// saving 17 % reads like a bug until one sees that device-only data stayed on
// the edge by rule. One line per such policy, each after `bullet`; empty when
// there is none.
std::string policy_notes(std::span<const PolicyReport> reports, const char* bullet) {
  std::string s;
  for (const auto& r : reports) {
    const bool cloud = r.policy == route::PolicyKind::kCloud;
    if (!cloud && r.policy != route::PolicyKind::kEdge) continue;
    std::array<int64_t, 4> by_class{};  // requests that stayed off the named tier
    int64_t off = 0, rejected = 0;
    for (const auto& o : r.outcomes) {
      if (o.rejected) {
        ++rejected;
      } else if (o.answered_by_cloud != cloud) {
        ++off;
        ++by_class[static_cast<size_t>(o.data_class)];
      }
    }
    if (off == 0 && rejected == 0) continue;
    s += format("%s%s: %lld of %lld requests ", bullet, r.label.c_str(),
                static_cast<long long>(off), static_cast<long long>(r.requests));
    if (cloud) {
      s += "stayed on the edge";
      std::string why;
      for (size_t c = 0; c < by_class.size(); ++c) {
        if (by_class[c] == 0) continue;
        why += format("%s%lld %s", why.empty() ? "" : ", ", static_cast<long long>(by_class[c]),
                      std::string(route::to_string(static_cast<route::DataClass>(c))).c_str());
      }
      s += " (" + why + "): their data class keeps them on the device by rule (docs/PRIVACY.md)";
    } else {
      s += "went to the cloud: what the edge cannot do (context, tools) or cannot run";
    }
    if (rejected > 0) s += format("; %lld rejected", static_cast<long long>(rejected));
    s += "\n";
  }
  return s;
}

}  // namespace

std::string format_policy_table(std::span<const PolicyReport> reports) {
  std::string s =
      format("%-18s %10s %8s %7s %7s %9s %9s %9s %8s %8s %8s\n", "policy", "cost $", "saved",
             "cloud", "escal.", "TTFT p50", "p95", "p99", "quality", "vs cloud", "privacy");
  for (const auto& r : reports) {
    s += format("%-18s %10.4f %7.1f%% %6.1f%% %7lld %7.0fms %7.0fms %7.0fms %8s %8s %8lld\n",
                r.label.c_str(), r.cost_usd, r.saved_pct, r.cloud_share * 100,
                static_cast<long long>(r.escalations), r.ttft_ms.p50, r.ttft_ms.p95, r.ttft_ms.p99,
                quality_cell(r).c_str(), vs_cloud_cell(r).c_str(),
                static_cast<long long>(r.privacy_violations));
  }
  return s + policy_notes(reports, "");
}

nlohmann::json policy_report_to_json(const PolicyReport& r) {
  nlohmann::json j = {
      {"label", r.label},
      {"policy", route::to_string(r.policy)},
      {"threshold", r.threshold},
      {"requests", r.requests},
      {"edge_answers", r.edge_answers},
      {"cloud_answers", r.cloud_answers},
      {"escalations", r.escalations},
      {"rejected", r.rejected},
      {"cloud_calls", r.cloud_calls},
      {"cost_usd", r.cost_usd},
      {"cloud_only_cost_usd", r.cloud_only_cost_usd},
      {"saved_usd", r.saved_usd},
      {"saved_pct", r.saved_pct},
      {"cloud_share", r.cloud_share},
      {"ttft_ms", latency_json(r.ttft_ms)},
      {"edge_ttft_ms", latency_json(r.edge_ttft_ms)},
      {"cloud_ttft_ms", latency_json(r.cloud_ttft_ms)},
      {"escalated_ttft_ms", latency_json(r.escalated_ttft_ms)},
      {"edge_wait_ms", latency_json(r.edge_wait_ms)},
      {"predicted_quality", r.predicted_quality},
      {"scored_requests", r.scored_requests},
      {"privacy_violations", r.privacy_violations},
  };
  j["quality"] = r.quality ? nlohmann::json(*r.quality) : nlohmann::json(nullptr);
  j["cloud_only_quality"] =
      r.cloud_only_quality ? nlohmann::json(*r.cloud_only_quality) : nlohmann::json(nullptr);
  return j;
}

std::string cost_quality_svg(std::span<const PolicyReport> policies,
                             std::span<const PolicyReport> sweep) {
  const bool scored = all_scored(policies) && (sweep.empty() || all_scored(sweep));
  svg::LineChart chart;
  chart.title = scored ? "Cost and quality per policy" : "Cost and predicted quality per policy";
  chart.x_label = "cost, % of sending everything to the cloud";
  chart.y_label = scored ? "mean quality (trace scores)" : "router's predicted quality";
  if (!sweep.empty()) {
    svg::Series& s = chart.add("threshold sweep", "#555555");
    s.markers = true;
    for (const auto& r : sweep) s.points.emplace_back(100.0 - r.saved_pct, shown_quality(r));
  }
  for (size_t i = 0; i < policies.size(); ++i) {
    const auto& r = policies[i];
    svg::Series& s = chart.add(r.label, kPolicyColors[i % std::size(kPolicyColors)],
                               {{100.0 - r.saved_pct, shown_quality(r)}});
    s.line = false;
    s.markers = true;
    s.point_labels = {r.label};
  }
  if (scored && !policies.empty() && policies[0].cloud_only_quality) {
    const double q = *policies[0].cloud_only_quality;
    chart.add("cloud-only quality", kCloudColor, {{0, q}, {100, q}}, true);
    chart.add("95% of cloud-only", kRejectedColor, {{0, 0.95 * q}, {100, 0.95 * q}}, true);
  }
  double x_hi = 100;
  for (const auto& series : chart.series) {
    for (const auto& p : series.points) x_hi = std::max(x_hi, p.first);
  }
  chart.x_range = {0.0, x_hi};
  return svg::render(chart);
}

std::string latency_svg(std::span<const PolicyReport> policies) {
  svg::LineChart chart;
  chart.title = "Time to first token per tier";
  chart.x_label = "TTFT, ms (log scale)";
  chart.y_label = "share of the path's requests at or below";
  chart.log_x = true;
  chart.y_range = {0.0, 1.0};
  enum Path { kEdgePath, kCloudPath, kEscalatedPath };
  auto path_of = [](const RequestOutcome& o) {
    return o.escalated ? kEscalatedPath : o.answered_by_cloud ? kCloudPath : kEdgePath;
  };
  // Each path is drawn from the policy that sends it the most requests, so
  // that every curve rests on as many samples as the run has.
  auto cdf = [&](Path path, const char* name, const char* color) {
    const PolicyReport* from = nullptr;
    std::vector<double> v;
    for (const auto& p : policies) {
      std::vector<double> here;
      for (const auto& o : p.outcomes) {
        if (!o.rejected && path_of(o) == path) here.push_back(o.ttft_ms);
      }
      if (here.size() > v.size()) {
        v = std::move(here);
        from = &p;
      }
    }
    if (v.empty()) return;
    std::sort(v.begin(), v.end());
    svg::Series& s =
        chart.add(format("%s (policy %s, %zu)", name, from->label.c_str(), v.size()), color);
    // At most ~200 points: enough for a smooth curve, small enough to read.
    const size_t step = std::max<size_t>(1, v.size() / 200);
    for (size_t i = 0; i < v.size(); i += step) {
      s.points.emplace_back(std::max(v[i], 0.01),
                            static_cast<double>(i + 1) / static_cast<double>(v.size()));
    }
    s.points.emplace_back(std::max(v.back(), 0.01), 1.0);
  };
  cdf(kEdgePath, "edge", kEdgeColor);
  cdf(kCloudPath, "cloud", kCloudColor);
  cdf(kEscalatedPath, "escalated", kEscalatedColor);
  return svg::render(chart);
}

std::string traffic_svg(std::span<const PolicyReport> policies) {
  svg::StackedBars chart;
  chart.title = "Where requests were answered";
  chart.segment_names = {"edge", "cloud", "escalated edge -> cloud", "rejected"};
  chart.segment_colors = {kEdgeColor, kCloudColor, kEscalatedColor, kRejectedColor};
  for (const auto& r : policies) {
    chart.bars.push_back(
        {r.label,
         {static_cast<double>(r.edge_answers), static_cast<double>(r.cloud_answers - r.escalations),
          static_cast<double>(r.escalations), static_cast<double>(r.rejected)}});
  }
  return svg::render(chart);
}

Status write_report(const std::string& dir, const ReportInputs& in) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return make_error(ErrorKind::kIo, "cannot create " + dir + ": " + ec.message());
  }
  auto write = [&](const std::string& name, const std::string& text) -> Status {
    const std::string path = (fs::path(dir) / name).string();
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) return make_error(ErrorKind::kIo, "cannot write " + path);
    return Status::Ok();
  };
  std::string md = "# Simulation report\n\n";
  md += "Made with:\n\n```\n" + in.command + "\n```\n\n";
  const TraceSummary& t = in.trace;
  md += "## Trace\n\n";
  md += format(
      "`%s`: %lld requests over %.1f h; mean prompt %.0f tokens, mean output %.0f tokens; %lld "
      "with per-tier quality scores.\n\n",
      in.trace_path.c_str(), static_cast<long long>(t.requests), t.duration_s / 3600.0,
      t.mean_prompt_tokens, t.mean_output_tokens, static_cast<long long>(t.with_scores));
  md += "| data class (router's verdict) | requests | share |\n|---|---|---|\n";
  for (int c = 0; c < 4; ++c) {
    md += format("| %s | %lld | %.1f%% |\n",
                 std::string(route::to_string(static_cast<route::DataClass>(c))).c_str(),
                 static_cast<long long>(t.data_class_counts[c]),
                 t.requests ? 100.0 * static_cast<double>(t.data_class_counts[c]) /
                                  static_cast<double>(t.requests)
                            : 0.0);
  }
  auto table = [&](std::span<const PolicyReport> reports) {
    std::string s =
        "| policy | cost $ | saved vs cloud-only | cloud share | escalations | TTFT p50 | p95 | "
        "p99 | quality | vs cloud | privacy violations |\n|---|---|---|---|---|---|---|---|---|"
        "---|---|\n";
    for (const auto& r : reports) {
      s += format(
          "| %s | %.4f | %.1f%% | %.1f%% | %lld | %.0f ms | %.0f ms | %.0f ms | %s | %s | "
          "%lld |\n",
          r.label.c_str(), r.cost_usd, r.saved_pct, r.cloud_share * 100,
          static_cast<long long>(r.escalations), r.ttft_ms.p50, r.ttft_ms.p95, r.ttft_ms.p99,
          quality_cell(r).c_str(), vs_cloud_cell(r).c_str(),
          static_cast<long long>(r.privacy_violations));
    }
    if (const std::string notes = policy_notes(reports, "- "); !notes.empty()) s += "\n" + notes;
    return s;
  };
  md += "\n## Policies\n\n" + table(in.policies);
  if (!in.policies.empty()) {
    md += format("\nCloud-only cost of this trace: $%.4f.\n",
                 in.policies.front().cloud_only_cost_usd);
  }
  md +=
      "\n![cost and quality](cost_quality.svg)\n\n![traffic mix](traffic.svg)\n\n"
      "![latency per tier](latency.svg)\n";
  if (!in.sweep.empty()) md += "\n## Threshold sweep\n\n" + table(in.sweep);
  if (in.advice) md += "\n## Advice\n\n```\n" + format_advice(*in.advice) + "```\n";
  const SimulationOptions& o = in.options;
  md += "\n## Models\n\n";
  md += format(
      "- Edge: TTFT = %.1f ms + prompt / %.0f tok/s, then %.1f tok/s; jitter sigma %.2f.\n"
      "- Cloud: TTFT = %.0f ms RTT + %.0f ms + prompt / %.0f tok/s, then %.1f tok/s; jitter "
      "sigma %.2f.\n"
      "- Cascade escalation: with scores, edge answers under %.2f are caught with "
      "probability %.2f and others escalated with probability %.2f; without scores, with the "
      "router's complexity as the probability.\n"
      "- Config: %s. Seed %llu.\n",
      o.edge.network_rtt_ms + o.edge.overhead_ms, o.edge.prompt_tokens_per_s,
      o.edge.output_tokens_per_s, o.edge.jitter_sigma, o.cloud.network_rtt_ms, o.cloud.overhead_ms,
      o.cloud.prompt_tokens_per_s, o.cloud.output_tokens_per_s, o.cloud.jitter_sigma,
      o.escalation.quality_bar, o.escalation.recall, o.escalation.false_alarm,
      in.config_source.c_str(), static_cast<unsigned long long>(o.seed));

  FSH_TRY_STATUS(write("cost_quality.svg", cost_quality_svg(in.policies, in.sweep)));
  FSH_TRY_STATUS(write("traffic.svg", traffic_svg(in.policies)));
  FSH_TRY_STATUS(write("latency.svg", latency_svg(in.policies)));
  return write("report.md", md);
}

}  // namespace foreshore::sim
