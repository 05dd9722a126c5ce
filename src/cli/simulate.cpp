// `foreshore simulate` and `foreshore advise`: replay a trace through the
// real router with tier latency and price models, and apply the decision
// framework to it (src/sim/sim.h, docs/SIMULATOR.md).
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "cli/commands.h"
#include "sim/sim.h"

namespace foreshore::cli {
namespace {

struct ModelFlags {
  std::string trace;
  std::string config;
  std::string out;
  bool json = false;
  bool measure_edge = false;
  sim::SimulationOptions options;
};

struct SimulateFlags {
  ModelFlags model;
  std::string policies = "threshold,cascade,optimize,edge,cloud";
  bool sweep = false;
  int sweep_points = 21;
  int64_t generate = 0;
  double rate = 0.5;
  double diurnal = 0.6;
};

struct AdviseFlags {
  ModelFlags model;
  sim::AdviceOptions advice;
  double api_usd_per_mtok = 0.0;
};

// The command as typed, for the report's "made with" line.
std::string command_line() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string out = "foreshore";
  size_t start = all.find('\0');
  while (start != std::string::npos && start + 1 < all.size()) {
    const size_t end = all.find('\0', start + 1);
    out += " " + all.substr(start + 1, end - start - 1);
    start = end;
  }
  return out;
}

void add_model_options(CLI::App* cmd, ModelFlags& f) {
  sim::SimulationOptions& o = f.options;
  cmd->add_option("--trace", f.trace, "Trace of requests, JSONL (format: docs/SIMULATOR.md)");
  cmd->add_option("--config", f.config,
                  "Gateway YAML whose tiers, prices, routing: and privacy: sections configure the "
                  "router (default: an embedded edge and gpt-4o-mini at $0.15/$0.60 per Mtok)");
  cmd->add_option("--seed", o.seed, "Seed of latency jitter and escalation draws")
      ->capture_default_str();
  cmd->add_flag("--json", f.json, "Print JSON instead of tables");
  cmd->add_flag("--measure-edge", f.measure_edge,
                "Run the config's embedded edge model briefly and use its measured prompt and "
                "generation speed and context length");
  auto* g = cmd->add_option_group("latency model",
                                  "Tier latency: TTFT = RTT + overhead + prompt / prompt-tps, "
                                  "then one token per 1/gen-tps; log-normal jitter on TTFT");
  auto non_negative = [g](const char* name, auto& value, const char* help) {
    g->add_option(name, value, help)->capture_default_str()->check(kNonNegative);
  };
  non_negative("--edge-prompt-tps", o.edge.prompt_tokens_per_s, "Edge prefill, tokens/s");
  non_negative("--edge-gen-tps", o.edge.output_tokens_per_s, "Edge generation, tokens/s");
  non_negative("--edge-overhead-ms", o.edge.overhead_ms, "Edge fixed time to first token");
  non_negative("--edge-jitter", o.edge.jitter_sigma, "Sigma of the edge's log-normal jitter");
  non_negative("--edge-context", o.edge_context,
               "Edge context in tokens (0: the config's, or no limit)");
  g->add_flag("--shared-edge", o.shared_edge,
              "Model the edge as one shared server, as the embedded tier is: it runs up to "
              "--edge-slots requests at once (continuous batching), the rest queue in arrival "
              "order, and the router sees its load. Default: each request finds its edge free "
              "(one device per user)");
  o.edge_slots = 0;
  g->add_option("--edge-slots", o.edge_slots,
                "Requests the shared edge runs at once (0: the config's edge tier's "
                "max_concurrency)")
      ->capture_default_str()
      ->check(kNonNegative);
  g->add_option("--edge-batch-speedup", o.edge_batch_speedup,
                "The shared edge's aggregate speed with 1, 2, 3, ... requests running, "
                "relative to one alone, comma-separated (e.g. 1,1.9,2.6,3.2; the last holds "
                "beyond). Default: measured with --measure-edge, else 1 (no gain)")
      ->delimiter(',')
      ->check(kPositive);
  non_negative("--cloud-rtt-ms", o.cloud.network_rtt_ms, "Network round trip to the cloud");
  non_negative("--cloud-ttft-ms", o.cloud.overhead_ms,
               "Cloud server time to first token beyond prefill (queueing, scheduling)");
  non_negative("--cloud-prompt-tps", o.cloud.prompt_tokens_per_s, "Cloud prefill, tokens/s");
  non_negative("--cloud-tps", o.cloud.output_tokens_per_s, "Cloud generation, tokens/s");
  non_negative("--cloud-jitter", o.cloud.jitter_sigma, "Sigma of the cloud's log-normal jitter");
  auto* e = cmd->add_option_group("cascade model",
                                  "How often a cascade escalates (used with per-tier scores; "
                                  "without them the router's complexity is the probability)");
  e->add_option("--escalation-bar", o.escalation.quality_bar,
                "Edge answers scoring below this count as inadequate")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  e->add_option("--escalation-recall", o.escalation.recall,
                "Probability that an inadequate edge answer is escalated")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  e->add_option("--escalation-false-alarm", o.escalation.false_alarm,
                "Probability that an adequate edge answer is escalated anyway")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
}

Result<std::unique_ptr<sim::Simulator>> make_simulator(ModelFlags& f, std::string& source) {
  if (f.trace.empty()) {
    return make_error(ErrorKind::kInvalidArgument,
                      "--trace FILE.jsonl is required (make one with --generate N --out FILE)");
  }
  FSH_ASSIGN_OR_RETURN(std::vector<sim::TraceRecord> trace, sim::read_trace(f.trace));
  auto config = f.config.empty() ? sim::default_gateway_config() : config::load_config(f.config);
  if (!config.ok()) return config.error();
  source = config->source;
  if (f.measure_edge) {
    FSH_ASSIGN_OR_RETURN(f.options, sim::measure_edge(*config, f.options));
    std::cerr << "measured edge: " << f.options.edge.prompt_tokens_per_s << " prompt tok/s, "
              << f.options.edge.output_tokens_per_s << " generated tok/s, context "
              << f.options.edge_context << ", aggregate speed with 1.." << f.options.edge_slots
              << " running:";
    for (double x : f.options.edge_batch_speedup) std::cerr << " " << x << "x";
    std::cerr << "\n";
  }
  if (f.options.edge_slots <= 0) f.options.edge_slots = sim::edge_tier_slots(*config);
  return sim::Simulator::create(*config, f.options, std::move(trace));
}

Result<std::vector<route::PolicyKind>> parse_policies(const std::string& list) {
  std::vector<route::PolicyKind> out;
  std::stringstream in(list);
  std::string name;
  while (std::getline(in, name, ',')) {
    if (name.empty()) continue;
    auto p = route::parse_policy(name);
    if (!p) {
      return make_error(ErrorKind::kInvalidArgument,
                        "--policies: '" + name +
                            "' is not a policy; use threshold, cascade, consistency, optimize, "
                            "edge, cloud");
    }
    out.push_back(*p);
  }
  if (out.empty()) return make_error(ErrorKind::kInvalidArgument, "--policies is empty");
  return out;
}

int run_generate(const SimulateFlags& f) {
  if (f.model.out.empty()) {
    return fail(make_error(ErrorKind::kInvalidArgument, "--generate needs --out FILE.jsonl"));
  }
  if (f.rate <= 0) {
    return fail(make_error(ErrorKind::kInvalidArgument, "--rate must be above 0 requests/s"));
  }
  sim::TraceGeneratorOptions g;
  g.requests = f.generate;
  g.seed = f.model.options.seed;
  g.mean_rate_per_s = f.rate;
  g.diurnal_amplitude = f.diurnal;
  const auto trace = sim::generate_trace(g);
  if (auto s = sim::write_trace(f.model.out, trace); !s.ok()) return fail(s.error());
  std::cout << "wrote " << trace.size() << " requests over "
            << (trace.empty() ? 0.0 : trace.back().arrival_s / 3600.0) << " h to " << f.model.out
            << "\n";
  return 0;
}

int privacy_verdict(std::span<const sim::PolicyReport> reports) {
  int64_t violations = 0;
  for (const auto& r : reports) violations += r.privacy_violations;
  if (violations == 0) return 0;
  std::cerr << "error: " << violations
            << " plans would send device-only data to a cloud tier; this is a router bug\n";
  return 3;
}

// Writes the --out report folder (nothing without --out) and says where,
// unless the output is JSON.
Status write_report_folder(const ModelFlags& model, const std::string& source,
                           sim::Simulator& simulator, std::vector<sim::PolicyReport> policies,
                           std::vector<sim::PolicyReport> sweep,
                           std::optional<sim::Advice> advice) {
  if (model.out.empty()) return Status::Ok();
  sim::ReportInputs in;
  in.command = command_line();
  in.trace_path = model.trace;
  in.config_source = source;
  in.trace = sim::summarize_trace(simulator);
  in.options = simulator.options();
  in.policies = std::move(policies);
  in.sweep = std::move(sweep);
  in.advice = std::move(advice);
  FSH_TRY_STATUS(sim::write_report(model.out, in));
  if (!model.json) std::cout << "\nreport written to " << model.out << "/report.md\n";
  return Status::Ok();
}

int run_simulate(SimulateFlags& f) {
  if (f.generate > 0) return run_generate(f);
  auto policies = parse_policies(f.policies);
  if (!policies.ok()) return fail(policies.error());
  std::string source;
  auto sim = make_simulator(f.model, source);
  if (!sim.ok()) return fail(sim.error());
  std::vector<sim::PolicyReport> reports, sweep;
  for (route::PolicyKind p : *policies) reports.push_back((*sim)->run(p));
  if (f.sweep) sweep = (*sim)->sweep(f.sweep_points);

  if (f.model.json) {
    nlohmann::json j = {{"policies", nlohmann::json::array()}, {"sweep", nlohmann::json::array()}};
    for (const auto& r : reports) j["policies"].push_back(sim::policy_report_to_json(r));
    for (const auto& r : sweep) j["sweep"].push_back(sim::policy_report_to_json(r));
    std::cout << j.dump(2) << "\n";
  } else {
    std::cout << sim::format_policy_table(reports);
    if (!sweep.empty()) std::cout << "\nthreshold sweep:\n" << sim::format_policy_table(sweep);
  }
  if (auto s = write_report_folder(f.model, source, **sim, reports, sweep, std::nullopt); !s.ok()) {
    return fail(s.error());
  }
  return std::max(privacy_verdict(reports), privacy_verdict(sweep));
}

int run_advise(AdviseFlags& f) {
  if (f.api_usd_per_mtok > 0) f.advice.api_usd_per_mtok = f.api_usd_per_mtok;
  std::string source;
  auto sim = make_simulator(f.model, source);
  if (!sim.ok()) return fail(sim.error());
  const sim::Advice advice = sim::advise(**sim, f.advice);
  if (f.model.json) {
    nlohmann::json j = {
        {"holding", advice.holding},
        {"hybrid_justified", advice.hybrid_justified},
        {"start_policy", advice.start_policy},
        {"recommendation", advice.recommendation},
        {"sample_warning",
         advice.sample_warning.empty() ? nlohmann::json() : nlohmann::json(advice.sample_warning)},
        {"api_usd_per_mtok", advice.api_usd_per_mtok},
        {"break_even_utilization", advice.break_even_utilization},
        {"sustained_utilization", advice.sustained_utilization},
        {"gpus_for_peak", advice.gpus_for_peak},
        {"criteria", nlohmann::json::array()}};
    j["start_threshold"] =
        advice.start_threshold ? nlohmann::json(*advice.start_threshold) : nlohmann::json();
    for (const auto& c : advice.criteria) {
      j["criteria"].push_back({{"name", c.name}, {"holds", c.holds}, {"evidence", c.evidence}});
    }
    std::cout << j.dump(2) << "\n";
  } else {
    std::cout << sim::format_advice(advice);
  }
  if (!f.model.out.empty()) {
    std::vector<sim::PolicyReport> policies;
    for (auto p :
         {route::PolicyKind::kThreshold, route::PolicyKind::kCascade, route::PolicyKind::kOptimize,
          route::PolicyKind::kEdge, route::PolicyKind::kCloud}) {
      policies.push_back((*sim)->run(p));
    }
    std::vector<sim::PolicyReport> sweep = advice.candidates;
    std::erase_if(sweep, [](const sim::PolicyReport& r) {
      return r.policy != route::PolicyKind::kThreshold;
    });
    if (auto s = write_report_folder(f.model, source, **sim, std::move(policies), std::move(sweep),
                                     advice);
        !s.ok()) {
      return fail(s.error());
    }
  }
  return privacy_verdict(advice.candidates);
}

}  // namespace

void add_simulate_command(CLI::App& app) {
  auto f = std::make_shared<SimulateFlags>();
  CLI::App* cmd = app.add_subcommand(
      "simulate",
      "Replay a trace of requests through the real router and policies, with tier latency and "
      "price models: cost, saving against cloud-only, TTFT percentiles, cloud share, quality, "
      "escalations and privacy violations per policy. Or generate a synthetic trace.");
  add_model_options(cmd, f->model);
  cmd->add_option("--policies", f->policies,
                  "Policies to compare, comma-separated: threshold, cascade, consistency, "
                  "optimize, edge, cloud")
      ->capture_default_str();
  cmd->add_flag("--sweep", f->sweep,
                "Also sweep the threshold policy over the trace's complexity quantiles (the "
                "cost-quality curve)");
  cmd->add_option("--sweep-points", f->sweep_points, "Thresholds in the sweep")
      ->capture_default_str()
      ->check(CLI::Range(2, 1000));
  cmd->add_option("--out", f->model.out,
                  "With --trace: a folder for report.md and the SVG figures. With --generate: "
                  "the trace file to write");
  auto* g = cmd->add_option_group("trace generator", "Synthetic traces (docs/SIMULATOR.md)");
  g->add_option("--generate", f->generate, "Write a synthetic trace of N requests to --out")
      ->check(CLI::Range(int64_t{1}, int64_t{100000000}));
  g->add_option("--rate", f->rate, "Mean arrival rate over the day, requests/s")
      ->capture_default_str()
      ->check(kNonNegative);
  g->add_option("--diurnal", f->diurnal,
                "Day/night swing of the rate, as a fraction of the mean (0 to 1)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cmd->footer(
      "Examples:\n"
      "  foreshore simulate --generate 10000 --out trace.jsonl --seed 7\n"
      "  foreshore simulate --trace trace.jsonl --config examples/gateway.yaml\n"
      "  foreshore simulate --trace trace.jsonl --policies threshold,cascade,cloud --sweep \\\n"
      "      --out sim-report            # report.md, cost_quality.svg, latency.svg, traffic.svg\n"
      "  foreshore simulate --trace trace.jsonl --config examples/gateway.yaml --measure-edge\n"
      "  foreshore simulate --trace trace.jsonl --cloud-rtt-ms 120 --cloud-tps 40 --json\n"
      "Exit status 3 when any plan would send device-only data to a cloud tier.");
  on_run(cmd, [f] { return run_simulate(*f); });
}

void add_advise_command(CLI::App& app) {
  auto f = std::make_shared<AdviseFlags>();
  CLI::App* cmd = app.add_subcommand(
      "advise",
      "Is hybrid worth it for this workload? Checks the four conditions of the decision "
      "framework (latency budget under 200 ms, device-only data, high steady volume, mostly "
      "low-to-medium complexity) on a trace, with numbers, and says which policy and threshold "
      "to start with.");
  add_model_options(cmd, f->model);
  cmd->add_option("--out", f->model.out, "Also write report.md and the SVG figures here");
  auto* v =
      cmd->add_option_group("volume break-even", "A dedicated cloud GPU against a per-token API");
  v->add_option("--gpu-usd-per-hour", f->advice.gpu_usd_per_hour, "Price of one GPU hour")
      ->capture_default_str()
      ->check(kPositive);
  v->add_option("--gpu-tokens-per-s", f->advice.gpu_tokens_per_s,
                "Prompt + output tokens/s one GPU sustains for this model")
      ->capture_default_str()
      ->check(kPositive);
  v->add_option("--api-usd-per-mtok", f->api_usd_per_mtok,
                "API price per million tokens (default: the cloud tier's prices, blended over "
                "the trace's prompt/output mix)")
      ->check(kNonNegative);
  cmd->add_option("--tight-budget-ms", f->advice.tight_budget_ms,
                  "What counts as a tight latency budget")
      ->capture_default_str()
      ->check(kPositive);
  cmd->add_option("--min-quality", f->advice.min_quality_vs_cloud,
                  "Share of cloud-only quality the recommended setting must keep")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cmd->footer(
      "Examples:\n"
      "  foreshore advise --trace trace.jsonl\n"
      "  foreshore advise --trace trace.jsonl --config examples/gateway.yaml \\\n"
      "      --gpu-usd-per-hour 2.0 --gpu-tokens-per-s 4000 --out advice\n"
      "Hybrid is justified when at least two conditions hold (docs/SIMULATOR.md).");
  on_run(cmd, [f] { return run_advise(*f); });
}

}  // namespace foreshore::cli
