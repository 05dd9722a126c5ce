// What the `foreshore router` subcommands share: the labelled-data flags and
// their checks, and how a routing evaluation is printed beside its baselines.
#pragma once

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"
#include "route/complexity.h"
#include "training/router_training.h"

namespace foreshore::cli::router_cmd {

using json = nlohmann::ordered_json;

struct DataFlags {
  std::vector<std::string> data;
  std::string format = "auto";
  std::vector<std::string> exclude;
  std::string weak_column, strong_column;
  std::string weak_model = "mistralai/Mixtral-8x7B-Instruct-v0.1";
  std::string strong_model = "gpt-4-1106-preview";
};

void add_data_flags(CLI::App* cmd, DataFlags& f);
route::DataOptions data_options(const DataFlags& f);

std::vector<std::string> split_list(const std::string& s);
std::vector<std::string> distinct_subjects(std::span<const route::LabelledPrompt> rows);

// Each of `scored` by its subject's mean gain (cloud minus edge quality) over
// the rows of `from`; a subject `from` lacks gets the mean over all of it.
std::vector<double> subject_mean_gains(std::span<const route::LabelledPrompt> from,
                                       std::span<const route::LabelledPrompt> scored);

// Said on stderr where a file was named twice: it is read once; and where
// no exclusion list applied, since RouteLLM's MMLU list only works beside
// the files it was written for.
void warn_about_load(const route::LoadReport& load);

// A misspelt subject would otherwise match nothing, silently: refuse it and
// name the nearest subject the data holds.
Status check_subjects(const std::string& flag, const std::vector<std::string>& names,
                      const std::set<std::string>& found);

std::string pct(std::optional<double> v);
json opt_json(std::optional<double> v);
json metrics_json(const route::RoutingMetrics& m);

// APGR divides by the gap between the tiers: where the cloud is no better,
// it is not a measure of routing skill, and no router "recovers" a gap that
// is not there. Then the random router's CPT is not given either (it would
// read "100%" beside the router's "n/a").
bool cloud_is_better(const route::RoutingMetrics& m);
json random_json(const route::RandomBaseline& random, int trials, bool cloud_better);

// The comparison table: a header, then one row per router.
void print_comparison_header(const route::RoutingMetrics& m);
void print_router_row(const char* name, const route::RoutingMetrics& m, const char* note = "");
void print_random_row(const route::RandomBaseline& random, int trials, bool cloud_better);

// `router replay` and `router status` (router_learning.cpp), added to the
// `router` command by add_router_command.
void add_router_learning_commands(CLI::App* router);

}  // namespace foreshore::cli::router_cmd
