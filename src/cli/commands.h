// Subcommands of the foreshore binary; each registers itself on the app.
#pragma once

#include <CLI/CLI.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"

namespace foreshore::cli {

void add_run_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_serve_command(CLI::App& app);
void add_router_command(CLI::App& app);
void add_report_command(CLI::App& app);
void add_route_command(CLI::App& app);
void add_quantize_command(CLI::App& app);
void add_prune_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_simulate_command(CLI::App& app);
void add_advise_command(CLI::App& app);
void add_keys_command(CLI::App& app);

// What every subcommand does with an error: prints it on stderr and returns
// the exit status, 2 for bad input (an invalid argument or something not
// found), 1 for anything else.
int fail(const Error& e);

// Checks of numeric options whose refusals read plainly: CLI11's own
// NonNegativeNumber and PositiveNumber are ranges up to the largest double,
// and say "not in range 0.000000 to 179769313486231570814527...". The names
// (shown in --help as FLOAT:NONNEGATIVE) are CLI11's.
extern const CLI::Validator kNonNegative;
extern const CLI::Validator kPositive;
// -t: 0 (one per core) to engine::kMaxThreads.
extern const CLI::Validator kThreadCount;
// A number from lo to hi, NaN refused: "'nan' is not between 0 and 2".
CLI::Validator number_range(double lo, double hi);

// Levenshtein distance: how many single-byte edits turn `a` into `b`.
size_t edit_distance(std::string_view a, std::string_view b);

// For a command line whose subcommand does not exist ("foreshore rout"), the
// message naming the nearest existing one and listing them all; nullopt when
// every subcommand on the line exists. CLI11 alone says only "A subcommand is
// required" or that an argument was not expected.
std::optional<std::string> unknown_subcommand_message(const CLI::App& app, int argc,
                                                      const char* const* argv);

// Runs `command` when the subcommand is chosen; a nonzero result it returns
// becomes the process's exit status.
template <typename Command>
void on_run(CLI::App* cmd, Command command) {
  cmd->callback([command] {
    if (const int rc = command(); rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace foreshore::cli
