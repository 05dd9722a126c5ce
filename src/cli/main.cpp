// The switchyard binary: one front end over the library core.
#include <CLI/CLI.hpp>
#include <iostream>

#include "cli/commands.h"

int main(int argc, char** argv) {
  CLI::App app{
      "switchyard: hybrid edge-cloud LLM inference. Runs small models on this device,\n"
      "sends what needs it to OpenAI-compatible cloud tiers, and decides per request."};
  app.require_subcommand(1);
  app.set_version_flag("--version", "switchyard 0.1.0");
  app.footer(
      "Examples:\n"
      "  switchyard run -m stories260K -p \"Once upon a time\"\n"
      "  switchyard serve -m stories260K --port 8080\n"
      "  switchyard serve --config examples/gateway.yaml\n"
      "  switchyard quantize stories260K stories260K-q8.gguf --type Q8_0\n"
      "  switchyard bench -m stories260K -p 128 -n 32\n"
      "Models are found by path or by name in SWITCHYARD_MODEL_PATH\n"
      "(colon-separated folders; default models:../shared/data/models).");
  sy::cli::add_run_command(app);
  sy::cli::add_bench_command(app);
  sy::cli::add_serve_command(app);
  sy::cli::add_router_command(app);
  sy::cli::add_report_command(app);
  sy::cli::add_quantize_command(app);
  sy::cli::add_prune_command(app);
  sy::cli::add_eval_command(app);
  sy::cli::add_simulate_command(app);
  sy::cli::add_advise_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return 0;
}
