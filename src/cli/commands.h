// Subcommands of the foreshore binary; each registers itself on the app.
#pragma once

#include <CLI/CLI.hpp>

#include "common/result.h"

namespace foreshore::cli {

void add_run_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_serve_command(CLI::App& app);
void add_router_command(CLI::App& app);
void add_report_command(CLI::App& app);
void add_quantize_command(CLI::App& app);
void add_prune_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_simulate_command(CLI::App& app);
void add_advise_command(CLI::App& app);

// What every subcommand does with an error: prints it on stderr and returns
// the exit status, 2 for bad input (an invalid argument or something not
// found), 1 for anything else.
int fail(const Error& e);

// Runs `command` when the subcommand is chosen; a nonzero result it returns
// becomes the process's exit status.
template <typename Command>
void on_run(CLI::App* cmd, Command command) {
  cmd->callback([command] {
    if (const int rc = command(); rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace foreshore::cli
