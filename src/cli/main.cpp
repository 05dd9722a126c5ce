// The foreshore binary: one front end over the library core.
#include <CLI/CLI.hpp>
#include <cstdlib>
#include <iostream>
#include <string>

#include "cli/commands.h"
#include "engine/kernels.h"

namespace {

// "foreshore 0.1.0" and the kernels' level, with the levels this CPU has.
std::string version_text() {
  std::string levels;
  for (foreshore::engine::CpuLevel level : foreshore::engine::supported_cpu_levels()) {
    levels += levels.empty() ? "" : ", ";
    levels += foreshore::engine::cpu_level_name(level);
  }
  return "foreshore 0.1.0\nkernels: " +
         std::string(foreshore::engine::cpu_level_name(foreshore::engine::cpu_level())) +
         " (this CPU: " + levels + ")";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "foreshore: hybrid edge-cloud LLM inference. Runs small models on this device,\n"
      "sends what needs it to OpenAI-compatible cloud tiers, and decides per request."};
  app.require_subcommand(1);
  app.set_version_flag("--version", version_text);
  // Also accepted after the subcommand: foreshore bench --cpu-level scalar ...
  app.fallthrough();
  std::string cpu_level;
  app.add_option("--cpu-level", cpu_level,
                 "Run the kernels at this instruction-set level (x86-64: scalar, avx2, avx512; "
                 "ARM64: scalar, neon, dotprod, i8mm), for A/B "
                 "runs; "
                 "default: FORESHORE_CPU_LEVEL, else the best this CPU has. A level the CPU "
                 "lacks is an error");
  // Before any subcommand runs; a bad level from either source stops here
  // rather than with a warning at the first kernel call.
  app.parse_complete_callback([&cpu_level] {
    const char* env = std::getenv("FORESHORE_CPU_LEVEL");
    const bool from_flag = !cpu_level.empty();
    if (!from_flag && (env == nullptr || *env == '\0')) return;
    const foreshore::Status set = foreshore::engine::set_cpu_level(
        from_flag ? cpu_level : env, from_flag ? "--cpu-level" : "FORESHORE_CPU_LEVEL");
    if (!set.ok()) throw CLI::RuntimeError(foreshore::cli::fail(set.error()));
  });
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
  foreshore::cli::add_keys_command(app);
  if (auto unknown = foreshore::cli::unknown_subcommand_message(app, argc, argv)) {
    std::cerr << "error: " << *unknown << "\n";
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    // A command's own status (RuntimeError) and --help / --version (0) pass
    // through; every other parse error is bad usage, which exits 2 like the
    // commands' own input errors, not with CLI11's 100-odd codes.
    if (code == 0 || dynamic_cast<const CLI::RuntimeError*>(&e) != nullptr) return code;
    return 2;
  }
  return 0;
}
