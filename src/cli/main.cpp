// The foreshore binary: one front end over the library core.
#include <CLI/CLI.hpp>
#include <iostream>

#include "cli/commands.h"

int main(int argc, char** argv) {
  CLI::App app{
      "foreshore: hybrid edge-cloud LLM inference. Runs small models on this device,\n"
      "sends what needs it to OpenAI-compatible cloud tiers, and decides per request."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "foreshore 0.1.0");
  app.footer(
      "Examples:\n"
      "  foreshore run -m stories260K -p \"Once upon a time\"\n"
      "  foreshore serve -m stories260K --port 8080\n"
      "  foreshore serve --config examples/gateway.yaml\n"
      "  foreshore route --explain -p \"Prove that sqrt(2) is irrational\"\n"
      "  foreshore quantize stories260K stories260K-q8.gguf --type Q8_0\n"
      "  foreshore bench -m stories260K -p 128 -n 32\n"
      "Models are found by path or by name in FORESHORE_MODEL_PATH\n"
      "(colon-separated folders; default models:../shared/data/models).");
  foreshore::cli::add_run_command(app);
  foreshore::cli::add_bench_command(app);
  foreshore::cli::add_serve_command(app);
  foreshore::cli::add_router_command(app);
  foreshore::cli::add_route_command(app);
  foreshore::cli::add_report_command(app);
  foreshore::cli::add_quantize_command(app);
  foreshore::cli::add_prune_command(app);
  foreshore::cli::add_eval_command(app);
  foreshore::cli::add_simulate_command(app);
  foreshore::cli::add_advise_command(app);
  if (auto unknown = foreshore::cli::unknown_subcommand_message(app, argc, argv)) {
    std::cerr << "error: " << *unknown << "\n";
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return 0;
}
