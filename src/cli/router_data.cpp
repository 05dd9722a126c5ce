#include "cli/router_data.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <sstream>

#include "cli/commands.h"

namespace foreshore::cli::router_cmd {

using route::LabelledPrompt;

void add_data_flags(CLI::App* cmd, DataFlags& f) {
  cmd->add_option("--data", f.data,
                  "Labelled data files or folders: RouteLLM/RouterBench CSV, JSONL, MT-Bench "
                  "judgements.jsonl")
      ->required();
  cmd->add_option("--format", f.format, "auto (by extension), csv or jsonl")
      ->check(CLI::IsMember({"auto", "csv", "jsonl"}))
      ->capture_default_str();
  cmd->add_option("--exclude", f.exclude,
                  "JSONL lists of prompts to leave out (every contaminated_prompts.jsonl "
                  "in the data's router-data folder, or in the data's own folder outside one, "
                  "is always applied)");
  cmd->add_option("--weak-column", f.weak_column,
                  "CSV column with the edge (weak) model's result (default: the data set's)");
  cmd->add_option("--strong-column", f.strong_column,
                  "CSV column with the cloud (strong) model's result (default: the data set's)");
  cmd->add_option("--weak-model", f.weak_model, "MT-Bench model acting as the edge")
      ->capture_default_str();
  cmd->add_option("--strong-model", f.strong_model, "MT-Bench model acting as the cloud")
      ->capture_default_str();
}

route::DataOptions data_options(const DataFlags& f) {
  route::DataOptions o;
  o.format = f.format == "csv"     ? route::DataFormat::kCsv
             : f.format == "jsonl" ? route::DataFormat::kJsonl
                                   : route::DataFormat::kAuto;
  o.exclude_files = f.exclude;
  o.weak_column = f.weak_column;
  o.strong_column = f.strong_column;
  o.weak_model = f.weak_model;
  o.strong_model = f.strong_model;
  return o;
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

std::vector<std::string> distinct_subjects(std::span<const LabelledPrompt> rows) {
  std::set<std::string> s;
  for (const auto& r : rows) s.insert(r.subject);
  return {s.begin(), s.end()};
}

std::vector<double> subject_mean_gains(std::span<const LabelledPrompt> from,
                                       std::span<const LabelledPrompt> scored) {
  std::map<std::string, std::pair<double, int>> gain;
  double total = 0.0;
  for (const auto& r : from) {
    auto& [sum, n] = gain[r.subject];
    sum += r.cloud_quality - r.edge_quality;
    total += r.cloud_quality - r.edge_quality;
    ++n;
  }
  const double overall = from.empty() ? 0.0 : total / static_cast<double>(from.size());
  std::vector<double> scores;
  scores.reserve(scored.size());
  for (const auto& r : scored) {
    const auto it = gain.find(r.subject);
    scores.push_back(it == gain.end() ? overall : it->second.first / it->second.second);
  }
  return scores;
}

void warn_about_load(const route::LoadReport& load) {
  if (load.exclusion_lists.empty()) {
    std::fprintf(stderr,
                 "warning: no contaminated_prompts.jsonl in the data's tree and no "
                 "--exclude given: no prompts were filtered as contaminated; pass the "
                 "list with --exclude (RouteLLM's are in its mmlu, gsm8k and mt_bench folders)\n");
  }
  for (const auto& f : load.duplicate_files) {
    std::fprintf(stderr,
                 "warning: %s was given more than once (directly or through its folder); "
                 "read once\n",
                 f.c_str());
  }
}

Status check_subjects(const std::string& flag, const std::vector<std::string>& names,
                      const std::set<std::string>& found) {
  for (const auto& name : names) {
    if (found.count(name)) continue;
    std::string best;
    size_t best_d = std::string::npos;
    for (const auto& s : found) {
      // A shortened name ("high_school_math") is as near as a typo.
      const size_t d = s.starts_with(name) ? 1 : edit_distance(name, s);
      if (d < best_d) {
        best_d = d;
        best = s;
      }
    }
    std::string msg = flag + ": the data holds no subject '" + name + "'";
    if (!best.empty() && best_d <= std::max<size_t>(3, name.size() / 3)) {
      msg += "; did you mean '" + best + "'?";
    } else {
      msg += "; it holds " + std::to_string(found.size()) + " subject" +
             (found.size() == 1 ? "" : "s") +
             (found.empty() ? "" : " (first: '" + *found.begin() + "')");
    }
    return make_error(ErrorKind::kInvalidArgument, msg);
  }
  return Status::Ok();
}

std::string pct(std::optional<double> v) {
  if (!v) return "n/a";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f%%", *v * 100.0);
  return buf;
}

json opt_json(std::optional<double> v) {
  return v ? json(*v) : json(nullptr);
}

json metrics_json(const route::RoutingMetrics& m) {
  return {
      {"apgr", m.apgr}, {"auc", m.auc}, {"cpt50", opt_json(m.cpt50)}, {"cpt80", opt_json(m.cpt80)}};
}

bool cloud_is_better(const route::RoutingMetrics& m) {
  return m.cloud_quality > m.edge_quality;
}

json random_json(const route::RandomBaseline& random, int trials, bool cloud_better) {
  return {{"apgr", random.apgr_mean},
          {"apgr_95", {random.apgr_lo, random.apgr_hi}},
          {"cpt50", cloud_better ? json(random.cpt50_mean) : json(nullptr)},
          {"cpt80", cloud_better ? json(random.cpt80_mean) : json(nullptr)},
          {"trials", trials}};
}

void print_comparison_header(const route::RoutingMetrics& m) {
  std::printf("quality: edge only %.4f, cloud only %.4f\n\n", m.edge_quality, m.cloud_quality);
  if (!cloud_is_better(m)) {
    std::printf(
        "warning: the cloud does no better than the edge on these prompts, so APGR and "
        "CPT say nothing about routing here; evaluate on data where the cloud is "
        "better (more subjects)\n\n");
  }
  std::printf("%-22s %8s %10s %10s\n", "router", "APGR", "CPT(50%)", "CPT(80%)");
}

void print_router_row(const char* name, const route::RoutingMetrics& m, const char* note) {
  std::printf("%-22s %8.3f %10s %10s%s\n", name, m.apgr, pct(m.cpt50).c_str(), pct(m.cpt80).c_str(),
              note);
}

void print_random_row(const route::RandomBaseline& random, int trials, bool cloud_better) {
  const auto cpt = [&](double v) { return cloud_better ? pct(v) : pct(std::nullopt); };
  std::printf("%-22s %8.3f %10s %10s   (%d seeded trials; APGR 95%%: %.3f-%.3f)\n", "random",
              random.apgr_mean, cpt(random.cpt50_mean).c_str(), cpt(random.cpt80_mean).c_str(),
              trials, random.apgr_lo, random.apgr_hi);
}

}  // namespace foreshore::cli::router_cmd
