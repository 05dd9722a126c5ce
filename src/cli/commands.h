// Subcommands of the switchyard binary; each registers itself on the app.
#pragma once

#include <CLI/CLI.hpp>

namespace sy::cli {

void add_run_command(CLI::App& app);
void add_serve_command(CLI::App& app);
void add_router_command(CLI::App& app);
void add_report_command(CLI::App& app);
void add_quantize_command(CLI::App& app);
void add_prune_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_simulate_command(CLI::App& app);
void add_advise_command(CLI::App& app);

}  // namespace sy::cli
