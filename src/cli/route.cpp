// `foreshore route --explain`: the routing decision for one prompt, offline.
// It builds the gateway a config describes and asks it what POST /v1/route
// would answer, so the explanation cannot drift from the server's.
#include <cstdio>
#include <iostream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "cli/commands.h"
#include "serve/serve.h"

namespace foreshore::cli {
namespace {

using json = nlohmann::json;

struct RouteFlags {
  bool explain = false;
  std::string prompt;
  std::string config_file;
  config::FlagConfig flags;
  std::string policy;
  std::string data_class;
  std::string tier;
  std::string latency_budget_ms;
  std::string cost_ceiling_usd;
  int max_tokens = 0;
  bool json = false;
};

std::string number(const json& v) {
  if (!v.is_number()) return v.dump();
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", v.get<double>());
  return buf;
}

void print_plan(const json& plan, const char* indent) {
  std::cout << indent << plan.value("kind", "?");
  const std::string edge = plan.value("edge_tier", ""), cloud = plan.value("cloud_tier", "");
  if (!edge.empty() || !cloud.empty()) {
    std::cout << " (edge " << (edge.empty() ? "-" : edge) << ", cloud "
              << (cloud.empty() ? "-" : cloud) << ")";
  }
  std::cout << ": " << plan.value("reason", "") << "\n";
  std::cout << indent << "  predicted cost $" << number(plan["predicted_cost_usd"]) << ", TTFT "
            << number(plan["predicted_ttft_ms"]) << " ms, quality "
            << number(plan["predicted_quality"])
            << (plan.value("cloud_allowed", false) ? "" : "; data may not leave the device")
            << "\n";
}

// The same JSON as text, for a person reading a terminal.
void print_explanation(const json& d) {
  const json& s = d["signals"];
  const json& sens = s["sensitivity"];
  std::cout << "policy " << d.value("policy", "?") << ", decided in " << number(d["decision_us"])
            << " us\n";
  std::cout << "plan:\n";
  print_plan(d["plan"], "  ");
  std::cout << "signals:\n";
  std::cout << "  sensitivity: " << sens.value("data_class", "?") << " (rule "
            << sens.value("rule", "?");
  for (const json& hit : sens["hits"]) {
    std::cout << "; " << hit.value("detector", "?") << " in message " << hit["message"]
              << " at bytes " << hit["begin"] << "-" << hit["end"];
  }
  std::cout << ")\n";
  std::cout << "  complexity:  " << number(s["complexity"]) << " against threshold "
            << number(s["complexity_threshold"]) << " ("
            << (s["complexity"].get<double>() >= s["complexity_threshold"].get<double>()
                    ? "cloud-worthy"
                    : "edge can answer")
            << ")\n";
  std::cout << "  context:     " << s["prompt_tokens"] << " prompt tokens"
            << (s.value("prompt_tokens_estimated", false) ? " (estimated)" : "") << " + "
            << s["expected_output_tokens"] << " expected of " << s["edge_context"] << " on the edge"
            << (s.value("fits_edge_context", true) ? "" : ": does NOT fit") << "\n";
  std::cout << "  tiers:       edge " << (s.value("edge_available", false) ? "up" : "DOWN")
            << " (queue " << s["edge_queue_depth"] << ", TTFT " << number(s["edge_ttft_ms"])
            << " ms, $" << number(s["edge_cost_usd"]) << "), cloud "
            << (s.value("cloud_available", false) ? "up" : "DOWN") << " (TTFT "
            << number(s["cloud_ttft_ms"]) << " ms, $" << number(s["cloud_cost_usd"]) << ")\n";
  std::cout << "  memory pressure " << s["memory_pressure"];
  if (s.contains("latency_budget_ms")) std::cout << ", latency budget " << s["latency_budget_ms"];
  if (s.contains("cost_ceiling_usd")) std::cout << ", cost ceiling $" << s["cost_ceiling_usd"];
  if (const std::string lacks = s.value("edge_unsupported", ""); !lacks.empty()) {
    std::cout << ", edge cannot do: " << lacks;
  }
  std::cout << "\n";
  std::cout << "rules fired: " << (d["rules_fired"].empty() ? "none" : "");
  for (size_t i = 0; i < d["rules_fired"].size(); ++i) {
    std::cout << (i ? ", " : "") << d["rules_fired"][i].get<std::string>();
  }
  std::cout << "\nalternatives:\n";
  if (d["alternatives"].empty()) std::cout << "  none\n";
  for (const json& a : d["alternatives"]) print_plan(a, "  ");
}

int route_main(const RouteFlags& f) {
  if (!f.explain) {
    return fail(make_error(ErrorKind::kInvalidArgument,
                           "route needs --explain: it explains a decision and runs nothing; "
                           "send the request to `foreshore serve` to run it"));
  }
  std::string prompt = f.prompt;
  if (prompt.empty()) {
    prompt.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  }
  if (prompt.empty()) {
    return fail(make_error(ErrorKind::kInvalidArgument,
                           "no prompt: pass -p TEXT or send the text on stdin"));
  }
  auto config = f.config_file.empty() ? config::config_from_flags(f.flags)
                                      : config::load_config(f.config_file);
  if (!config.ok()) return fail(config.error());
  // Nothing listens and nothing is logged: the gateway is built only to decide.
  config->server.log_requests = false;
  config->server.audit_db.clear();
  config->server.decision_log.clear();
  serve::Gateway gateway(std::move(config).value());
  if (auto loaded = gateway.load_tiers(); !loaded.ok()) return fail(loaded.error());

  json body = {{"model", f.policy.empty() ? "foreshore" : f.policy},
               {"messages", json::array({{{"role", "user"}, {"content", prompt}}})}};
  if (f.max_tokens > 0) body["max_tokens"] = f.max_tokens;
  std::vector<std::pair<std::string, std::string>> headers;
  const auto hint = [&](const char* name, const std::string& value) {
    if (!value.empty()) headers.emplace_back(name, value);
  };
  hint("x-foreshore-data-class", f.data_class);
  hint("x-foreshore-tier", f.tier);
  hint("x-foreshore-latency-budget-ms", f.latency_budget_ms);
  hint("x-foreshore-cost-ceiling-usd", f.cost_ceiling_usd);
  auto explained = gateway.explain_route(body.dump(), headers);
  if (!explained.ok()) return fail(explained.error());
  if (f.json) {
    std::cout << *explained << "\n";
  } else {
    print_explanation(json::parse(*explained));
  }
  return 0;
}

}  // namespace

void add_route_command(CLI::App& app) {
  auto f = std::make_shared<RouteFlags>();
  f->flags.model = "stories260K";
  f->flags.upstream = "https://api.openai.com/v1";
  f->flags.upstream_model = "gpt-4o-mini";
  CLI::App* cmd = app.add_subcommand(
      "route",
      "Explain where a prompt would run and why (signals, rules, plan, alternatives), offline: "
      "the same decision and JSON as POST /v1/route, nothing is sent anywhere");
  cmd->add_flag("--explain", f->explain, "Explain the decision (required; nothing is run)");
  cmd->add_option("-p,--prompt", f->prompt, "The user message (default: read stdin)");
  auto* config_opt = cmd->add_option("--config", f->config_file,
                                     "Gateway YAML to decide with, as `serve --config` reads it");
  auto* model_opt = cmd->add_option("-m,--model", f->flags.model,
                                    "Without --config: the edge tier's model (name or path)")
                        ->capture_default_str();
  auto* upstream_opt =
      cmd->add_option("--upstream", f->flags.upstream,
                      "Without --config: the cloud tier's base URL (never contacted)")
          ->capture_default_str();
  cmd->add_option("--upstream-model", f->flags.upstream_model,
                  "Without --config: the cloud tier's model id")
      ->capture_default_str();
  config_opt->excludes(model_opt)->excludes(upstream_opt);
  cmd->add_option("--policy", f->policy,
                  "Model name the client sends: foreshore (the configured policy), "
                  "foreshore/threshold, foreshore/cascade, ... or a tier or alias");
  cmd->add_option("--data-class", f->data_class,
                  "Declared data class (x-foreshore-data-class): device-only, contractual, "
                  "prefer-local or public");
  cmd->add_option("--tier", f->tier, "Force a tier (x-foreshore-tier)");
  cmd->add_option("--latency-budget-ms", f->latency_budget_ms,
                  "Latency budget to the first token (x-foreshore-latency-budget-ms)");
  cmd->add_option("--cost-ceiling-usd", f->cost_ceiling_usd,
                  "Most the request may cost (x-foreshore-cost-ceiling-usd)");
  cmd->add_option("--max-tokens", f->max_tokens, "The request's max_tokens (0: not sent)")
      ->check(kNonNegative);
  cmd->add_flag("--json", f->json, "Print POST /v1/route's JSON instead of text");
  cmd->footer(
      "Examples:\n"
      "  foreshore route --explain -p \"Prove that sqrt(2) is irrational\"\n"
      "  foreshore route --explain -p \"My SSN is 123-45-6789\" --tier cloud\n"
      "  foreshore route --explain --config examples/gateway.yaml -p \"Hi\" --json\n"
      "Without --config it decides for an edge tier running -m and a cloud tier at\n"
      "--upstream; the cloud is only described, never contacted.");
  on_run(cmd, [f] { return route_main(*f); });
}

}  // namespace foreshore::cli
