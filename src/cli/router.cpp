// `foreshore router train|eval|cv|score`: fit the complexity model from
// labelled prompts, score it the way RouteLLM scores routers, choose its
// settings by cross-validation, and look at one decision.
#include "route/router.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "route/complexity.h"
#include "route/online_learner.h"
#include "sim/sim.h"
#include "training/router_training.h"

namespace foreshore::cli {
namespace {

using json = nlohmann::ordered_json;
using route::LabelledPrompt;
using route::RoutingMetrics;

struct DataFlags {
  std::vector<std::string> data;
  std::string format = "auto";
  std::vector<std::string> exclude;
  std::string weak_column, strong_column;
  std::string weak_model = "mistralai/Mixtral-8x7B-Instruct-v0.1";
  std::string strong_model = "gpt-4-1106-preview";
};

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

std::vector<std::string> distinct_subjects(const std::vector<LabelledPrompt>& rows) {
  std::set<std::string> s;
  for (const auto& r : rows) s.insert(r.subject);
  return {s.begin(), s.end()};
}

// Each of `scored` by its subject's mean gain (cloud minus edge quality) over
// the rows of `from`; a subject `from` lacks gets the mean over all of it.
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

// Said on stderr where a file was named twice: it is read once; and where
// no exclusion list applied, since RouteLLM's MMLU list only works beside
// the files it was written for.
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

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// A misspelt subject would otherwise match nothing, silently: refuse it and
// name the nearest subject the data holds.
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

// ---- train -----------------------------------------------------------------------

// How a model is fitted: shared by `train` and `cv`.
struct FitFlags {
  std::string label = "gain";
  double l2 = 1e-3;
  double l2_hashed = 1e-3;
  int hash_bits = 13;
  bool bigrams = false;
  int max_iterations = 400;
  std::string drop;
};

void add_fit_flags(CLI::App* cmd, FitFlags& f) {
  cmd->add_option("--drop-subjects", f.drop, "Subjects to leave out entirely (bad labels), a,b,c");
  cmd->add_option("--label", f.label,
                  "gain: escalation's expected gain (1 cloud better, 0.5 tie, 0 edge "
                  "better); weak-wrong: edge wrong; cloud-wins: edge wrong and cloud right")
      ->capture_default_str();
  cmd->add_option("--l2", f.l2, "L2 strength on the named features")->capture_default_str();
  cmd->add_option("--l2-hashed", f.l2_hashed, "L2 strength on the hashed word n-grams")
      ->capture_default_str();
  cmd->add_option("--hash-bits", f.hash_bits, "log2 of the number of n-gram buckets")
      ->check(CLI::Range(route::kMinHashBits, route::kMaxHashBits))
      ->capture_default_str();
  cmd->add_flag("--bigrams", f.bigrams, "Hash word pairs as well as single words");
  cmd->add_option("--max-iterations", f.max_iterations, "L-BFGS iteration cap")
      ->capture_default_str();
}

Result<route::TrainOptions> train_options(const FitFlags& f) {
  const auto label = route::parse_label_rule(f.label);
  if (!label) {
    return make_error(ErrorKind::kInvalidArgument,
                      "--label '" + f.label + "' is unknown; use gain, weak-wrong or cloud-wins");
  }
  route::TrainOptions t;
  t.label = *label;
  t.l2_dense = f.l2;
  t.l2_hashed = f.l2_hashed;
  t.hashing.bits = f.hash_bits;
  t.hashing.bigrams = f.bigrams;
  t.max_iterations = f.max_iterations;
  return t;
}

// `--holdout-subjects`: empty, "none", "default" (the fixed MMLU split) or a,b,c.
std::vector<std::string> holdout_subjects(const std::string& flag) {
  if (flag == "default") return route::default_holdout_subjects();
  if (flag.empty() || flag == "none") return {};
  return split_list(flag);
}

void print_load_report(const route::LoadReport& load) {
  std::fprintf(
      stderr,
      "[data: %zu files, %lld rows kept; %lld contaminated and %lld held-out or dropped rows left "
      "out, %lld unlabelled skipped]\n",
      load.files.size(), static_cast<long long>(load.rows),
      static_cast<long long>(load.excluded_contaminated),
      static_cast<long long>(load.dropped_by_subject),
      static_cast<long long>(load.skipped_unlabelled));
  warn_about_load(load);
}

// What `train` and `cv` fit on: `files`, less the held-out and dropped subjects.
Result<std::vector<LabelledPrompt>> load_training_rows(const DataFlags& data,
                                                       const std::vector<std::string>& files,
                                                       const std::vector<std::string>& holdout,
                                                       const std::string& drop,
                                                       route::LoadReport* load,
                                                       bool check_names = true) {
  route::DataOptions o = data_options(data);
  o.drop_subjects = holdout;
  for (const auto& d : split_list(drop)) o.drop_subjects.push_back(d);
  auto rows = route::load_labelled_prompts(files, o, load);
  if (!rows.ok()) return rows;
  print_load_report(*load);
  if (!check_names) return rows;
  // The fixed MMLU split is named by rule, and data without MMLU has none of it.
  if (holdout != route::default_holdout_subjects()) {
    FSH_TRY_STATUS(check_subjects("--holdout-subjects", holdout, load->subjects_found));
  }
  FSH_TRY_STATUS(check_subjects("--drop-subjects", split_list(drop), load->subjects_found));
  return rows;
}

struct TrainFlags {
  DataFlags data;
  FitFlags fit;
  std::string out;
  double target_cloud_share = 0.3;
  std::string holdout;
  int calibration_folds = 5;
  std::string command;
};

// The command line, normalized, so the model file says how to remake it.
std::string describe(const TrainFlags& f) {
  std::ostringstream s;
  s << "foreshore router train";
  for (const auto& d : f.data.data) s << " --data " << d;
  if (f.data.format != "auto") s << " --format " << f.data.format;
  for (const auto& e : f.data.exclude) s << " --exclude " << e;
  if (!f.data.weak_column.empty()) s << " --weak-column '" << f.data.weak_column << "'";
  if (!f.data.strong_column.empty()) s << " --strong-column '" << f.data.strong_column << "'";
  if (!f.holdout.empty()) s << " --holdout-subjects " << f.holdout;
  if (!f.fit.drop.empty()) s << " --drop-subjects " << f.fit.drop;
  s << " --target-cloud-share " << f.target_cloud_share << " --label " << f.fit.label << " --l2 "
    << f.fit.l2 << " --l2-hashed " << f.fit.l2_hashed << " --hash-bits " << f.fit.hash_bits;
  if (f.fit.bigrams) s << " --bigrams";
  if (f.calibration_folds != 5) s << " --calibration-folds " << f.calibration_folds;
  s << " --out " << f.out;
  return s.str();
}

int train(const TrainFlags& f) {
  auto options = train_options(f.fit);
  if (!options.ok()) return fail(options.error());
  const std::vector<std::string> holdout = holdout_subjects(f.holdout);
  route::LoadReport load;
  auto rows = load_training_rows(f.data, f.data.data, holdout, f.fit.drop, &load);
  if (!rows.ok()) return fail(rows.error());

  route::TrainOptions& t = *options;
  t.target_cloud_share = f.target_cloud_share;
  t.calibration_folds = f.calibration_folds;
  t.info.data = load.files;
  t.info.training_subjects = distinct_subjects(*rows);
  t.info.holdout_subjects = holdout;
  t.info.excluded_contaminated = load.excluded_contaminated;
  t.info.command = f.command;
  route::TrainReport report;
  auto model = route::train_complexity_model(*rows, t, &report);
  if (!model.ok()) return fail(model.error());
  if (auto s = model->save(f.out); !s.ok()) return fail(s.error());
  std::fprintf(stderr,
               "[trained on %lld prompts (label %s, mean label %.3f) in %d L-BFGS iterations%s]\n"
               "[threshold %.6g sends %.1f%% of the %s scores to the cloud (%.1f%% of the final "
               "model's own training scores)]\n"
               "[wrote %s]\n",
               static_cast<long long>(model->info().rows), f.fit.label.c_str(),
               model->info().mean_label, report.iterations,
               report.converged ? "" : " (not converged: raise --max-iterations)",
               model->threshold(), report.calibrated_cloud_share * 100.0,
               report.calibration_folds ? "out-of-fold" : "in-sample",
               report.train_cloud_share * 100.0, f.out.c_str());
  return 0;
}

// ---- eval ------------------------------------------------------------------------

struct EvalFlags {
  DataFlags data;
  std::string model;
  std::string subjects = "all";
  bool json_out = false;
  std::string svg;
  // 200 trials gave a band too narrow by a third; 2,000 settle it.
  int random_trials = 2000;
};

// Quality against cloud share: the router, the random diagonal, the oracle,
// and the edge-only and cloud-only levels.
std::string render_svg(const RoutingMetrics& m, const RoutingMetrics& oracle,
                       const std::string& title) {
  sim::svg::LineChart chart;
  chart.title = title;
  chart.x_label = "cloud (strong model) share of prompts";
  chart.y_label = "quality";
  chart.x_range = std::pair{0.0, 1.0};
  auto curve = [](const std::vector<route::CurvePoint>& c) {
    std::vector<std::pair<double, double>> points;
    points.reserve(c.size());
    for (const auto& p : c) points.emplace_back(p.cloud_share, p.quality);
    return points;
  };
  auto level = [](double q) { return std::vector<std::pair<double, double>>{{0.0, q}, {1.0, q}}; };
  auto add = [&](std::string name, const char* color, std::vector<std::pair<double, double>> points,
                 bool dashed) {
    sim::svg::Series series;
    series.name = std::move(name);
    series.color = color;
    series.points = std::move(points);
    series.dashed = dashed;
    chart.series.push_back(std::move(series));
  };
  char name[96];
  std::snprintf(name, sizeof name, "complexity router (APGR %.3f)", m.apgr);
  add(name, "#1f5fbf", curve(m.curve), false);
  add("random router (APGR 0.5)", "#888888", {{0.0, m.edge_quality}, {1.0, m.cloud_quality}}, true);
  std::snprintf(name, sizeof name, "oracle (APGR %.3f)", oracle.apgr);
  add(name, "#22aa22", curve(oracle.curve), false);
  add("edge only", "#aaaaaa", level(m.edge_quality), true);
  add("cloud only", "#cc3333", level(m.cloud_quality), true);
  return sim::svg::render(chart);
}

// The curve point a threshold-sweep table shows for a target share: the first
// reachable share at or above it.
const route::CurvePoint& point_at(const RoutingMetrics& m, double share) {
  for (const auto& p : m.curve) {
    if (p.cloud_share + 1e-12 >= share) return p;
  }
  return m.curve.back();
}

json metrics_json(const RoutingMetrics& m) {
  return {
      {"apgr", m.apgr}, {"auc", m.auc}, {"cpt50", opt_json(m.cpt50)}, {"cpt80", opt_json(m.cpt80)}};
}

int eval(const EvalFlags& f) {
  auto model = route::ComplexityModel::load(f.model);
  if (!model.ok()) return fail(model.error());
  route::DataOptions o = data_options(f.data);
  const auto& trained = model->info().training_subjects;
  // A model trained without --holdout-subjects was still trained without
  // every subject it never saw: those are its held-out subjects here.
  const bool unseen_only = f.subjects == "holdout" && model->info().holdout_subjects.empty();
  if (f.subjects == "holdout") {
    o.only_subjects = model->info().holdout_subjects;
  } else if (f.subjects != "all") {
    o.only_subjects = split_list(f.subjects);
  }
  route::LoadReport load;
  auto rows = route::load_labelled_prompts(f.data.data, o, &load);
  if (!rows.ok()) return fail(rows.error());
  warn_about_load(load);
  if (auto s = check_subjects(f.subjects == "holdout" ? "--subjects holdout (the subjects " +
                                                            f.model + " records as held out)"
                                                      : std::string("--subjects"),
                              o.only_subjects, load.subjects_found);
      !s.ok()) {
    return fail(s.error());
  }
  if (unseen_only) {
    std::erase_if(*rows, [&](const LabelledPrompt& r) {
      return std::find(trained.begin(), trained.end(), r.subject) != trained.end();
    });
    if (rows->empty()) {
      return fail(make_error(ErrorKind::kInvalidArgument,
                             f.model + " was trained on every subject in this data, so none is "
                                       "held out; evaluate on other data, or name subjects "
                                       "with --subjects a,b,c"));
    }
    std::fprintf(stderr,
                 "[%s records no held-out subjects; evaluating on the %zu subjects of this data "
                 "it was not trained on]\n",
                 f.model.c_str(), distinct_subjects(*rows).size());
  }
  const auto subjects = distinct_subjects(*rows);
  int64_t seen = 0;
  for (const auto& r : *rows) {
    if (!r.subject.empty() &&
        std::find(trained.begin(), trained.end(), r.subject) != trained.end()) {
      ++seen;
    }
  }

  std::vector<double> scores;
  scores.reserve(rows->size());
  for (const auto& r : *rows) scores.push_back(model->score(r.prompt, r.edge_perplexity));
  auto m = route::evaluate_routing(scores, *rows);
  if (!m.ok()) return fail(m.error());
  auto random = route::random_baseline(*rows, f.random_trials, 20240701);
  if (!random.ok()) return fail(random.error());
  auto oracle = route::oracle_routing(*rows);
  if (!oracle.ok()) return fail(oracle.error());
  size_t at_cloud = 0;
  double at_quality = 0.0;
  for (size_t i = 0; i < rows->size(); ++i) {
    const bool cloud = model->prefers_cloud(scores[i]);
    at_cloud += cloud;
    at_quality += cloud ? (*rows)[i].cloud_quality : (*rows)[i].edge_quality;
  }
  const double n = static_cast<double>(rows->size());

  if (!f.svg.empty()) {
    std::ofstream out(f.svg, std::ios::binary | std::ios::trunc);
    char title[256];
    std::snprintf(title, sizeof title, "%s on %zu prompts (%zu subject%s)",
                  std::filesystem::path(f.model).filename().string().c_str(), rows->size(),
                  subjects.size(), subjects.size() == 1 ? "" : "s");
    out << render_svg(*m, *oracle, title);
    if (!out) {
      return fail(make_error(ErrorKind::kIo, "cannot write " + f.svg +
                                                 "; check that its folder exists and is writable"));
    }
  }

  // APGR divides by the gap: where the cloud is worse, it is not a measure of
  // routing skill, and no router "recovers" a gap that is not there.
  const bool cloud_better = m->cloud_quality > m->edge_quality;
  if (f.json_out) {
    json curve = json::array();
    const size_t stride = std::max<size_t>(1, m->curve.size() / 500);
    for (size_t i = 0; i < m->curve.size(); ++i) {
      if (i % stride != 0 && i + 1 != m->curve.size()) continue;
      const auto& p = m->curve[i];
      curve.push_back(
          {{"cloud_share", p.cloud_share},
           {"quality", p.quality},
           {"threshold", std::isfinite(p.threshold) ? json(p.threshold) : json(nullptr)}});
    }
    json doc = {{"model", f.model},
                {"rows", m->rows},
                {"subjects", subjects},
                {"rows_from_training_subjects", seen},
                {"excluded_contaminated", load.excluded_contaminated},
                {"edge_quality", m->edge_quality},
                {"cloud_quality", m->cloud_quality},
                {"router", metrics_json(*m)},
                {"random",
                 {{"apgr", random->apgr_mean},
                  {"apgr_95", {random->apgr_lo, random->apgr_hi}},
                  {"cpt50", cloud_better ? json(random->cpt50_mean) : json(nullptr)},
                  {"cpt80", cloud_better ? json(random->cpt80_mean) : json(nullptr)},
                  {"trials", f.random_trials}}},
                {"cloud_better", cloud_better},
                {"oracle", metrics_json(*oracle)},
                {"at_model_threshold",
                 {{"threshold", model->threshold()},
                  {"cloud_share", at_cloud / n},
                  {"quality", at_quality / n}}},
                {"curve", std::move(curve)}};
    std::cout << doc.dump(2) << "\n";
    return 0;
  }

  std::printf("%s on %lld prompts from %zu subject%s (%lld contaminated left out)\n",
              f.model.c_str(), static_cast<long long>(m->rows), subjects.size(),
              subjects.size() == 1 ? "" : "s", static_cast<long long>(load.excluded_contaminated));
  if (seen > 0) {
    std::printf(
        "note: %lld of these prompts are from subjects the model was trained on; "
        "--subjects holdout evaluates on held-out subjects only\n",
        static_cast<long long>(seen));
  }
  std::printf("quality: edge only %.4f, cloud only %.4f\n\n", m->edge_quality, m->cloud_quality);
  if (!cloud_better) {
    std::printf(
        "warning: the cloud does no better than the edge on these prompts, so APGR and "
        "CPT say nothing about routing here; evaluate on data where the cloud is "
        "better (more subjects)\n\n");
  }
  auto random_cpt = [&](double v) { return cloud_better ? pct(v) : pct(std::nullopt); };
  std::printf("%-22s %8s %10s %10s\n", "router", "APGR", "CPT(50%)", "CPT(80%)");
  std::printf("%-22s %8.3f %10s %10s\n", "complexity", m->apgr, pct(m->cpt50).c_str(),
              pct(m->cpt80).c_str());
  std::printf("%-22s %8.3f %10s %10s   (%d seeded trials; APGR 95%%: %.3f-%.3f)\n", "random",
              random->apgr_mean, random_cpt(random->cpt50_mean).c_str(),
              random_cpt(random->cpt80_mean).c_str(), f.random_trials, random->apgr_lo,
              random->apgr_hi);
  std::printf("%-22s %8.3f %10s %10s\n\n", "oracle", oracle->apgr, pct(oracle->cpt50).c_str(),
              pct(oracle->cpt80).c_str());
  std::printf("%12s %12s %10s\n", "cloud share", "threshold", "quality");
  for (int i = 0; i <= 10; ++i) {
    const auto& p = point_at(*m, i / 10.0);
    char th[32];
    if (std::isfinite(p.threshold)) {
      std::snprintf(th, sizeof th, "%.4f", p.threshold);
    } else {
      std::snprintf(th, sizeof th, "(none)");
    }
    std::printf("%11.1f%% %12s %10.4f\n", p.cloud_share * 100.0, th, p.quality);
  }
  std::printf("\nat the model's threshold %.4f: %.1f%% to cloud, quality %.4f\n",
              model->threshold(), at_cloud * 100.0 / n, at_quality / n);
  if (!f.svg.empty()) std::printf("curve written to %s\n", f.svg.c_str());
  return 0;
}

// ---- cv --------------------------------------------------------------------------

struct CvFlags {
  DataFlags data;
  FitFlags fit;
  std::vector<std::string> train_only;
  std::string holdout;
  int folds = 5;
  int repeats = 1;
  std::string group = "subject";
  uint64_t seed = 20240701;
  bool json_out = false;
  std::string scores_out;
};

// One JSON line per scored row and partition, for analysis outside: which
// prompts the out-of-fold model ranks high, or a second model stacked on it.
Status write_out_of_fold_scores(const std::string& path, const std::vector<LabelledPrompt>& rows,
                                const route::CrossValidationReport& report) {
  std::ofstream out(path);
  if (!out) {
    return make_error(ErrorKind::kInvalidArgument,
                      "--scores-out: cannot write '" + path + "'; check the folder exists");
  }
  for (size_t r = 0; r < report.repeats.size(); ++r) {
    const auto& repeat = report.repeats[r];
    for (size_t i = 0; i < rows.size(); ++i) {
      out << json{{"repeat", r + 1},
                  {"fold", repeat.fold_of[i] + 1},
                  {"subject", rows[i].subject},
                  {"score", repeat.scores[i]},
                  {"edge_quality", rows[i].edge_quality},
                  {"cloud_quality", rows[i].cloud_quality},
                  {"prompt", rows[i].prompt}}
                 .dump()
          << "\n";
    }
  }
  out.flush();
  if (!out) return make_error(ErrorKind::kInternal, "--scores-out: writing '" + path + "' failed");
  return Status::Ok();
}

int cross_validate(const CvFlags& f) {
  auto options = train_options(f.fit);
  if (!options.ok()) return fail(options.error());
  const std::vector<std::string> holdout = holdout_subjects(f.holdout);
  route::LoadReport load;
  auto rows = load_training_rows(f.data, f.data.data, holdout, f.fit.drop, &load);
  if (!rows.ok()) return fail(rows.error());
  std::vector<LabelledPrompt> extra;
  if (!f.train_only.empty()) {
    route::LoadReport extra_load;
    auto more = load_training_rows(f.data, f.train_only, holdout, f.fit.drop, &extra_load,
                                   /*check_names=*/false);
    if (!more.ok()) return fail(more.error());
    extra = std::move(*more);
  }
  route::CrossValidationOptions cv;
  cv.folds = f.folds;
  cv.repeats = f.repeats;
  cv.by_subject = f.group == "subject";
  cv.seed = f.seed;
  auto report = route::cross_validate(*rows, extra, *options, cv);
  if (!report.ok()) return fail(report.error());
  auto random = route::random_baseline(*rows, 2000, 20240701);
  if (!random.ok()) return fail(random.error());
  if (!f.scores_out.empty()) {
    if (auto s = write_out_of_fold_scores(f.scores_out, *rows, *report); !s.ok()) {
      return fail(s.error());
    }
  }

  if (f.json_out) {
    json repeats = json::array();
    for (const auto& r : report->repeats) {
      json folds = json::array();
      for (const auto& fold : r.folds) {
        folds.push_back(
            {{"subjects", fold.subjects}, {"rows", fold.rows}, {"apgr", opt_json(fold.apgr)}});
      }
      repeats.push_back({{"pooled", metrics_json(r.pooled)},
                         {"within_subject_apgr", opt_json(r.within_subject_apgr)},
                         {"folds", std::move(folds)}});
    }
    json doc = {
        {"rows", static_cast<int64_t>(rows->size())},
        {"train_only_rows", static_cast<int64_t>(extra.size())},
        {"subjects", distinct_subjects(*rows)},
        {"folds", f.folds},
        {"group", f.group},
        {"mean_apgr", report->mean_apgr},
        {"random", {{"apgr", random->apgr_mean}, {"apgr_95", {random->apgr_lo, random->apgr_hi}}}},
        {"repeats", std::move(repeats)}};
    std::cout << doc.dump(2) << "\n";
    return 0;
  }
  const size_t n_subjects = distinct_subjects(*rows).size();
  std::printf("%d-fold cross-validation by %s on %zu prompts (%zu subject%s)%s\n", f.folds,
              f.group.c_str(), rows->size(), n_subjects, n_subjects == 1 ? "" : "s",
              extra.empty() ? ""
                            : (", plus " + std::to_string(extra.size()) +
                               " prompts in every fold's training only")
                                  .c_str());
  std::printf("random router: APGR %.3f (95%%: %.3f-%.3f)\n\n", random->apgr_mean, random->apgr_lo,
              random->apgr_hi);
  std::printf("%-8s %8s %10s %10s %14s\n", "repeat", "APGR", "CPT(50%)", "CPT(80%)",
              "within-subject");
  for (size_t i = 0; i < report->repeats.size(); ++i) {
    const auto& r = report->repeats[i];
    char within[32] = "n/a";
    if (r.within_subject_apgr) std::snprintf(within, sizeof within, "%.3f", *r.within_subject_apgr);
    std::printf("%-8zu %8.3f %10s %10s %14s\n", i + 1, r.pooled.apgr, pct(r.pooled.cpt50).c_str(),
                pct(r.pooled.cpt80).c_str(), within);
  }
  std::printf("\nmean out-of-fold APGR over %zu partition%s: %.3f\n", report->repeats.size(),
              report->repeats.size() == 1 ? "" : "s", report->mean_apgr);
  std::printf("\nfolds of partition 1:\n");
  for (const auto& fold : report->repeats.front().folds) {
    char apgr[32] = "n/a";
    if (fold.apgr) std::snprintf(apgr, sizeof apgr, "%.3f", *fold.apgr);
    std::string names;
    for (const auto& s : fold.subjects) names += (names.empty() ? "" : ", ") + s;
    std::printf("  APGR %6s on %5lld prompts  %s\n", apgr, static_cast<long long>(fold.rows),
                names.c_str());
  }
  return 0;
}

// ---- score -----------------------------------------------------------------------

struct ScoreFlags {
  std::string model;  // empty: the shipped model, found beside the binary
  std::string prompt;
  bool prompt_given = false;  // -p "" is an empty prompt, not "read stdin"
  std::string input;          // JSONL of prompts; "-" for stdin
  double perplexity = 0.0;
  bool explain = false;
  bool json_out = false;
};

json explanation_json(const route::ComplexityExplanation& e, bool features) {
  json doc = {{"probability", e.probability},
              {"threshold", e.threshold},
              {"tier", e.prefers_cloud ? "cloud" : "edge"}};
  if (features) {
    json f = json::object();
    for (int i = 0; i < route::kDenseFeatureCount; ++i) {
      f[std::string(route::dense_feature_name(i))] = {{"value", e.dense[i]},
                                                      {"logit", e.dense_contribution[i]}};
    }
    doc["bias"] = e.bias;
    doc["features"] = std::move(f);
    doc["word_ngrams_logit"] = e.hashed_contribution;
  }
  return doc;
}

// Batch scoring: one JSON object per input line ({"prompt": ..., optional
// "edge_perplexity"} or a bare JSON string), one JSON line out per line in.
int score_batch(const ScoreFlags& f, const route::ComplexityModel& model) {
  std::ifstream file;
  std::istream* in = &std::cin;
  if (f.input != "-") {
    file.open(f.input, std::ios::binary);
    if (!file) {
      return fail(make_error(ErrorKind::kNotFound,
                             "--input: cannot read '" + f.input + "'; check the path"));
    }
    in = &file;
  }
  std::string line;
  size_t n = 0;
  while (std::getline(*in, line)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const json j = json::parse(line, nullptr, false);
    std::string prompt;
    std::optional<double> ppl;
    if (j.is_string()) {
      prompt = j.get<std::string>();
    } else if (j.is_object() && j.contains("prompt") && j["prompt"].is_string()) {
      prompt = j["prompt"].get<std::string>();
      if (j.contains("edge_perplexity") && j["edge_perplexity"].is_number()) {
        ppl = j["edge_perplexity"].get<double>();
      }
    } else {
      return fail(make_error(ErrorKind::kInvalidArgument,
                             f.input + ":" + std::to_string(n) +
                                 ": not a JSON string or an object with a \"prompt\" string; "
                                 "write one prompt per line as {\"prompt\": \"...\"}"));
    }
    json out = explanation_json(model.explain(prompt, ppl), f.explain);
    out["line"] = n;
    std::cout << out.dump() << "\n";
  }
  return 0;
}

int score(const ScoreFlags& f) {
  auto model = route::ComplexityModel::load(f.model.empty() ? route::default_complexity_model_path()
                                                            : f.model);
  if (!model.ok()) return fail(model.error());
  if (!f.input.empty()) {
    if (f.prompt_given) {
      return fail(make_error(ErrorKind::kInvalidArgument, "give either -p or --input, not both"));
    }
    return score_batch(f, *model);
  }
  if (f.prompt_given && f.prompt.empty()) {
    return fail(make_error(ErrorKind::kInvalidArgument,
                           "-p is empty; give the prompt's text, or leave -p out to read the "
                           "prompt from stdin"));
  }
  std::string prompt = f.prompt;
  if (!f.prompt_given) prompt.assign(std::istreambuf_iterator<char>(std::cin), {});
  const std::optional<double> ppl =
      f.perplexity > 0 ? std::optional<double>(f.perplexity) : std::nullopt;
  const route::ComplexityExplanation e = model->explain(prompt, ppl);
  if (f.json_out) {
    std::cout << explanation_json(e, f.explain).dump(2) << "\n";
    return 0;
  }
  std::printf("p(edge inadequate) = %.6f, threshold %.6f -> %s\n", e.probability, e.threshold,
              e.prefers_cloud ? "cloud" : "edge");
  if (f.explain) {
    std::printf("%-20s %10s %10s\n", "feature", "value", "logit");
    std::printf("%-20s %10s %+10.4f\n", "(bias)", "", e.bias);
    for (int i = 0; i < route::kDenseFeatureCount; ++i) {
      std::printf("%-20s %10.4f %+10.4f\n", std::string(route::dense_feature_name(i)).c_str(),
                  e.dense[i], e.dense_contribution[i]);
    }
    std::printf("%-20s %10s %+10.4f\n", "(word n-grams)", "", e.hashed_contribution);
  }
  return 0;
}

// ---- replay ------------------------------------------------------------------------

struct ReplayFlags {
  DataFlags data;
  std::string model;  // empty: the shipped model
  std::string subjects = "all";
  int labels = 1500;
  std::string order = "random";
  uint64_t seed = 20240701;
  double target_cloud_share = -1.0;
  int random_trials = 2000;
  int curve_points = 16;
  bool json_out = false;
  std::string svg;
  route::LearnerOptions learner;
};

// The learning curve: APGR on the evaluation rows against labels seen, with
// the static model and the random band as levels.
std::string render_learning_svg(const std::vector<std::pair<double, double>>& curve,
                                double static_apgr, const route::RandomBaseline& random,
                                const std::string& title) {
  sim::svg::LineChart chart;
  chart.title = title;
  chart.x_label = "labels seen";
  chart.y_label = "APGR on the rows after the labelled ones";
  const double right = curve.empty() ? 1.0 : std::max(1.0, curve.back().first);
  auto level = [&](double v) {
    return std::vector<std::pair<double, double>>{{0.0, v}, {right, v}};
  };
  auto add = [&](std::string name, const char* color, std::vector<std::pair<double, double>> pts,
                 bool dashed) {
    sim::svg::Series series;
    series.name = std::move(name);
    series.color = color;
    series.points = std::move(pts);
    series.dashed = dashed;
    chart.series.push_back(std::move(series));
  };
  add("learning router", "#1f5fbf", curve, false);
  char name[96];
  std::snprintf(name, sizeof name, "static model (APGR %.3f)", static_apgr);
  add(name, "#cc7700", level(static_apgr), true);
  add("random, 95% band", "#888888", level(random.apgr_hi), true);
  add("random, 95% band (low)", "#888888", level(random.apgr_lo), true);
  return sim::svg::render(chart);
}

// The form weights the learner has fitted, largest first (at most four).
void print_form_weights(const route::LearnerStats& stats) {
  if (stats.form_weights.empty()) return;
  std::string largest;
  for (size_t i = 0; i < stats.form_weights.size() && i < 4; ++i) {
    char item[96];
    std::snprintf(item, sizeof item, "%s%s %+.3f", i == 0 ? "" : ", ",
                  stats.form_weights[i].first.c_str(), stats.form_weights[i].second);
    largest += item;
  }
  std::printf("form weights, largest (logit per spread of this deployment's prompts): %s\n",
              largest.c_str());
}

int replay(const ReplayFlags& f) {
  const std::string model_path = f.model.empty() ? route::default_complexity_model_path() : f.model;
  auto loaded = route::ComplexityModel::load(model_path);
  if (!loaded.ok()) return fail(loaded.error());
  auto base = std::make_shared<const route::ComplexityModel>(std::move(*loaded));
  route::DataOptions o = data_options(f.data);
  if (f.subjects != "all") o.only_subjects = split_list(f.subjects);
  route::LoadReport load;
  auto loaded_rows = route::load_labelled_prompts(f.data.data, o, &load);
  if (!loaded_rows.ok()) return fail(loaded_rows.error());
  warn_about_load(load);
  if (auto s = check_subjects("--subjects", o.only_subjects, load.subjects_found); !s.ok()) {
    return fail(s.error());
  }
  std::vector<LabelledPrompt> rows = std::move(*loaded_rows);

  // The traffic's order: shuffled, or whole subjects one after another (the
  // labels then come from the first subjects and the evaluation from others).
  std::mt19937_64 rng(f.seed);
  if (f.order == "by-subject") {
    std::vector<std::string> subjects = distinct_subjects(rows);
    std::shuffle(subjects.begin(), subjects.end(), rng);
    std::stable_sort(rows.begin(), rows.end(), [&](const auto& a, const auto& b) {
      return std::find(subjects.begin(), subjects.end(), a.subject) <
             std::find(subjects.begin(), subjects.end(), b.subject);
    });
  } else {
    std::shuffle(rows.begin(), rows.end(), rng);
  }
  const size_t labels = static_cast<size_t>(f.labels);
  if (rows.size() < labels + 50) {
    return fail(make_error(ErrorKind::kInvalidArgument,
                           "--labels " + std::to_string(f.labels) + " leaves " +
                               std::to_string(rows.size() > labels ? rows.size() - labels : 0) +
                               " of " + std::to_string(rows.size()) +
                               " rows to evaluate on; give more data or fewer labels (at least "
                               "50 rows must follow the labelled ones)"));
  }
  const std::span<const LabelledPrompt> held(rows.data() + labels, rows.size() - labels);
  std::vector<route::ComplexityFeatures> features;
  features.reserve(rows.size());
  for (const auto& r : rows) {
    features.push_back(
        route::extract_complexity_features(r.prompt, base->hashing(), r.edge_perplexity));
  }

  route::LearnerOptions lo = f.learner;
  lo.target_cloud_share = f.target_cloud_share;
  lo.seed = f.seed;
  route::OnlineLearner learner(base, lo);
  auto held_apgr = [&](auto&& score) -> Result<RoutingMetrics> {
    std::vector<double> s;
    s.reserve(held.size());
    for (size_t i = labels; i < rows.size(); ++i) s.push_back(score(features[i]));
    return route::evaluate_routing(s, held);
  };
  auto learner_scores = [&](const route::ComplexityFeatures& x) { return learner.score(x); };

  // Play the labelled rows as traffic: each is routed (observed), then its
  // label revealed. The curve evaluates the same later rows at checkpoints.
  std::vector<std::pair<double, double>> curve;
  const int points = std::max(1, f.curve_points);
  size_t next_checkpoint = 0;
  int checkpoint = 0;
  for (size_t i = 0; i <= labels; ++i) {
    if (i == next_checkpoint) {
      auto m = held_apgr(learner_scores);
      if (!m.ok()) return fail(m.error());
      curve.emplace_back(static_cast<double>(i), m->apgr);
      ++checkpoint;
      next_checkpoint = labels * checkpoint / points;
      if (next_checkpoint <= i) next_checkpoint = i + 1;
    }
    if (i == labels) break;
    learner.observe_now(features[i]);
    route::LearnerLabel label;
    label.features = features[i];
    label.gain = route::label_for(rows[i].outcome, route::LabelRule::kGain);
    label.source = route::LabelSource::kImport;
    label.edge_quality = rows[i].edge_quality;
    label.cloud_quality = rows[i].cloud_quality;
    learner.apply(label);
  }
  // The rest of the traffic is routed too: the threshold follows it.
  for (size_t i = labels; i < rows.size(); ++i) learner.observe_now(features[i]);

  auto learned = held_apgr(learner_scores);
  if (!learned.ok()) return fail(learned.error());
  auto fixed = held_apgr([&](const route::ComplexityFeatures& x) { return base->score(x); });
  if (!fixed.ok()) return fail(fixed.error());
  auto random = route::random_baseline(held, f.random_trials, f.seed);
  if (!random.ok()) return fail(random.error());
  auto oracle = route::oracle_routing(held);
  if (!oracle.ok()) return fail(oracle.error());
  // The ceiling of subject-level routing: each evaluated row scored by its
  // subject's true mean gain over the evaluated rows (what a router that knew
  // every prompt's subject and that subject's mean exactly would reach).
  auto by_subject = route::evaluate_routing(subject_mean_gains(held, held), held);
  if (!by_subject.ok()) return fail(by_subject.error());
  // What the labels themselves allow at subject level: the subjects' mean
  // gains over the labelled rows. A router that knew every prompt's subject
  // and learned only subject means would reach this; the gap to the true
  // means above is the labels' sampling noise. (With no labels every row
  // ties: the sweep then has only its two ends.)
  auto by_learned_subject = route::evaluate_routing(
      subject_mean_gains(std::span<const LabelledPrompt>(rows.data(), labels), held), held);
  if (!by_learned_subject.ok()) return fail(by_learned_subject.error());
  const route::LearnerStats stats = learner.stats();
  const auto subjects = distinct_subjects(rows);
  const auto held_subjects =
      distinct_subjects(std::vector<LabelledPrompt>(held.begin(), held.end()));

  if (!f.svg.empty()) {
    std::ofstream out(f.svg, std::ios::binary | std::ios::trunc);
    char title[256];
    std::snprintf(title, sizeof title, "router replay: %zu labels, %s order, %zu rows evaluated",
                  labels, f.order.c_str(), held.size());
    out << render_learning_svg(curve, fixed->apgr, *random, title);
    if (!out) {
      return fail(make_error(ErrorKind::kIo, "cannot write " + f.svg +
                                                 "; check that its folder exists and is writable"));
    }
  }

  if (f.json_out) {
    json lc = json::array();
    for (const auto& [n, a] : curve) lc.push_back({{"labels", n}, {"apgr", a}});
    json doc = {{"model", model_path},
                {"labels", f.labels},
                {"order", f.order},
                {"seed", f.seed},
                {"rows", static_cast<int64_t>(rows.size())},
                {"subjects", subjects},
                {"evaluated_rows", learned->rows},
                {"evaluated_subjects", held_subjects},
                {"excluded_contaminated", load.excluded_contaminated},
                {"edge_quality", learned->edge_quality},
                {"cloud_quality", learned->cloud_quality},
                {"router", metrics_json(*learned)},
                {"static", metrics_json(*fixed)},
                {"random",
                 {{"apgr", random->apgr_mean},
                  {"apgr_95", {random->apgr_lo, random->apgr_hi}},
                  {"cpt50", random->cpt50_mean},
                  {"cpt80", random->cpt80_mean},
                  {"trials", f.random_trials}}},
                {"oracle", metrics_json(*oracle)},
                {"subject_means", metrics_json(*by_subject)},
                {"subject_means_from_labels", metrics_json(*by_learned_subject)},
                {"learner",
                 {{"threshold", stats.threshold},
                  {"neighbour_blend", stats.blend},
                  {"topic_weight", learner.snapshot()->topic_weight},
                  {"form_weights", route::form_weights_json(stats)},
                  {"estimated_apgr", opt_json(stats.estimated_apgr)},
                  {"estimate_rows", stats.estimate_rows}}},
                {"learning_curve", std::move(lc)}};
    std::cout << doc.dump(2) << "\n";
    return 0;
  }
  std::printf(
      "replayed %zu prompts from %zu subject%s (%s order, seed %llu); labels revealed for the "
      "first %zu, evaluated on the %lld after them (%zu subject%s)\n",
      rows.size(), subjects.size(), subjects.size() == 1 ? "" : "s", f.order.c_str(),
      static_cast<unsigned long long>(f.seed), labels, static_cast<long long>(learned->rows),
      held_subjects.size(), held_subjects.size() == 1 ? "" : "s");
  std::printf("quality: edge only %.4f, cloud only %.4f\n\n", learned->edge_quality,
              learned->cloud_quality);
  std::printf("%-22s %8s %10s %10s\n", "router", "APGR", "CPT(50%)", "CPT(80%)");
  std::printf("%-22s %8.3f %10s %10s\n", "learning", learned->apgr, pct(learned->cpt50).c_str(),
              pct(learned->cpt80).c_str());
  std::printf("%-22s %8.3f %10s %10s\n", "static (no labels)", fixed->apgr,
              pct(fixed->cpt50).c_str(), pct(fixed->cpt80).c_str());
  std::printf("%-22s %8.3f %10s %10s   (%d seeded trials; APGR 95%%: %.3f-%.3f)\n", "random",
              random->apgr_mean, pct(random->cpt50_mean).c_str(), pct(random->cpt80_mean).c_str(),
              f.random_trials, random->apgr_lo, random->apgr_hi);
  std::printf("%-22s %8.3f %10s %10s   (each row by its subject's true mean gain)\n",
              "subject means", by_subject->apgr, pct(by_subject->cpt50).c_str(),
              pct(by_subject->cpt80).c_str());
  std::printf("%-22s %8.3f %10s %10s   (each row by its subject's mean gain on the labels)\n",
              "subject means, labels", by_learned_subject->apgr,
              pct(by_learned_subject->cpt50).c_str(), pct(by_learned_subject->cpt80).c_str());
  std::printf("%-22s %8.3f %10s %10s\n\n", "oracle", oracle->apgr, pct(oracle->cpt50).c_str(),
              pct(oracle->cpt80).c_str());
  std::printf("learning curve (labels: APGR):");
  for (const auto& [n, a] : curve) std::printf(" %.0f: %.3f", n, a);
  std::printf("\n");
  if (stats.estimated_apgr) {
    std::printf(
        "the learner's own estimate from its labels (each scored before learning it): "
        "%.3f on the last %lld\n",
        *stats.estimated_apgr, static_cast<long long>(stats.estimate_rows));
  }
  print_form_weights(stats);
  if (!f.svg.empty()) std::printf("learning curve written to %s\n", f.svg.c_str());
  return 0;
}

// ---- status ------------------------------------------------------------------------

struct StatusFlags {
  std::string state;
  std::string model;  // empty: the shipped model
  int64_t rollback = -1;
  bool json_out = false;
};

// What a gateway's learner state file holds; with --rollback, restores an
// earlier version (stop the gateway first: it saves over the file on exit).
int status(const StatusFlags& f) {
  if (f.rollback >= 0) {
    if (auto s = route::rollback_learner_state(f.state, static_cast<uint64_t>(f.rollback));
        !s.ok()) {
      return fail(s.error());
    }
    std::fprintf(stderr, "[%s is version %lld again]\n", f.state.c_str(),
                 static_cast<long long>(f.rollback));
  }
  auto loaded = route::ComplexityModel::load(
      f.model.empty() ? route::default_complexity_model_path() : f.model);
  if (!loaded.ok()) return fail(loaded.error());
  route::OnlineLearner learner(std::make_shared<const route::ComplexityModel>(std::move(*loaded)),
                               {});
  if (auto s = learner.load(f.state); !s.ok()) return fail(s.error());
  const route::LearnerStats st = learner.stats();
  const auto versions = route::saved_learner_versions(f.state);
  if (f.json_out) {
    json labels = json::object();
    for (int i = 0; i < route::kLabelSourceCount; ++i) {
      labels[std::string(route::label_source_name(static_cast<route::LabelSource>(i)))] =
          st.labels[i];
    }
    json doc = {{"state", f.state},
                {"version", st.version},
                {"labels", labels},
                {"threshold", st.threshold},
                {"neighbour_blend", st.blend},
                {"form_weights", route::form_weights_json(st)},
                {"kept_labels", st.kept_labels},
                {"estimated_apgr", opt_json(st.estimated_apgr)},
                {"estimate_labels", st.estimate_rows},
                {"saved_versions", versions}};
    std::cout << doc.dump(2) << "\n";
    return 0;
  }
  std::printf("%s: version %llu (labels applied)\n", f.state.c_str(),
              static_cast<unsigned long long>(st.version));
  for (int i = 0; i < route::kLabelSourceCount; ++i) {
    std::printf("  %-9s %lld labels\n",
                std::string(route::label_source_name(static_cast<route::LabelSource>(i))).c_str(),
                static_cast<long long>(st.labels[i]));
  }
  std::printf("threshold %.6f\n", st.threshold);
  std::printf("neighbour estimate: %.3f of the score (fitted online), over %lld kept labels\n",
              st.blend, static_cast<long long>(st.kept_labels));
  print_form_weights(st);
  if (st.estimated_apgr) {
    std::printf(
        "estimated APGR %.3f on its last %lld labels with both tiers' quality, each "
        "scored before it was learned from\n",
        *st.estimated_apgr, static_cast<long long>(st.estimate_rows));
  } else {
    std::printf("estimated APGR: not yet (%lld labels with both tiers' quality; 50 needed)\n",
                static_cast<long long>(st.estimate_rows));
  }
  std::string kept;
  for (uint64_t v : versions) kept += (kept.empty() ? "" : ", ") + std::to_string(v);
  std::printf("earlier versions kept for --rollback: %s\n", kept.empty() ? "none" : kept.c_str());
  return 0;
}

}  // namespace

void add_router_command(CLI::App& app) {
  CLI::App* router = app.add_subcommand(
      "router", "Train, evaluate and try the complexity model that routes prompts edge/cloud");
  router->require_subcommand(1);
  router->footer(
      "Examples (docs/ROUTER.md explains each figure):\n"
      "  foreshore router score -p \"Prove that sqrt(2) is irrational\" --explain\n"
      "  foreshore router train --data labelled.jsonl --target-cloud-share 0.3 --out "
      "my-router.json\n"
      "  foreshore router eval --model my-router.json --data new-traffic.jsonl --svg curve.svg\n"
      "  foreshore router cv --data labelled.jsonl --repeats 10");

  auto tf = std::make_shared<TrainFlags>();
  CLI::App* train_cmd =
      router->add_subcommand("train", "Fit the complexity model from labelled prompts");
  add_data_flags(train_cmd, tf->data);
  train_cmd->add_option("--out", tf->out, "Model file to write (JSON)")->required();
  train_cmd
      ->add_option("--target-cloud-share", tf->target_cloud_share,
                   "Calibrate the threshold so this share of the training prompts goes to "
                   "the cloud")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  train_cmd->add_option("--holdout-subjects", tf->holdout,
                        "Subjects to leave out of training, for `router eval --subjects holdout`: "
                        "a,b,c, or 'default' (the fixed 9-of-38 MMLU split)");
  train_cmd
      ->add_option("--calibration-folds", tf->calibration_folds,
                   "Set the threshold on out-of-fold scores from this many extra fits "
                   "(< 2: on the final model's own training scores)")
      ->capture_default_str();
  add_fit_flags(train_cmd, tf->fit);
  train_cmd->footer(
      "Example (a model for `router eval --subjects holdout`; docs/ROUTER.md gives the\n"
      "shipped model's command):\n"
      "  foreshore router train --data ../shared/data/router-data/routellm/mmlu \\\n"
      "      --holdout-subjects default --drop-subjects high_school_mathematics \\\n"
      "      --out my-router.json");
  on_run(train_cmd, [tf] {
    tf->command = describe(*tf);
    return train(*tf);
  });

  auto ef = std::make_shared<EvalFlags>();
  CLI::App* eval_cmd = router->add_subcommand(
      "eval", "Score a complexity model RouteLLM's way: APGR, CPT(50%), CPT(80%)");
  add_data_flags(eval_cmd, ef->data);
  eval_cmd->add_option("--model", ef->model, "Model file from `router train`")->required();
  eval_cmd
      ->add_option("--subjects", ef->subjects,
                   "all, holdout (the subjects the model was trained without: those it "
                   "records, else every subject of the data it never saw), or a,b,c")
      ->capture_default_str();
  eval_cmd->add_flag("--json", ef->json_out, "Print the results as JSON");
  eval_cmd->add_option("--svg", ef->svg, "Draw quality vs cloud share into this SVG file");
  eval_cmd->add_option("--random-trials", ef->random_trials, "Seeded random routers to average")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  eval_cmd->footer(
      "Example (on the subjects my-router.json was trained without):\n"
      "  foreshore router eval --model my-router.json \\\n"
      "      --data ../shared/data/router-data/routellm/mmlu --subjects holdout --svg curve.svg");
  on_run(eval_cmd, [ef] { return eval(*ef); });

  auto cf = std::make_shared<CvFlags>();
  CLI::App* cv_cmd = router->add_subcommand(
      "cv", "Cross-validate the training settings: APGR on subjects each fold's model never saw");
  add_data_flags(cv_cmd, cf->data);
  add_fit_flags(cv_cmd, cf->fit);
  cv_cmd->add_option("--holdout-subjects", cf->holdout,
                     "Subjects kept out of the cross-validation (your final test set): a,b,c or "
                     "'default'");
  cv_cmd->add_option("--train-only-data", cf->train_only,
                     "More labelled data that every fold trains on and none is scored on");
  cv_cmd->add_option("--folds", cf->folds, "Number of folds")
      ->check(CLI::Range(2, 1000))
      ->capture_default_str();
  cv_cmd->add_option("--repeats", cf->repeats, "Partitions to average, each shuffled anew")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  cv_cmd
      ->add_option("--group", cf->group,
                   "subject: whole subjects per fold (new topics); row: prompts at random")
      ->check(CLI::IsMember({"subject", "row"}))
      ->capture_default_str();
  cv_cmd->add_option("--seed", cf->seed, "Shuffle seed")->capture_default_str();
  cv_cmd->add_flag("--json", cf->json_out, "Print the results as JSON");
  cv_cmd->add_option("--scores-out", cf->scores_out,
                     "Write every row's out-of-fold score to this JSONL file (repeat, fold, "
                     "subject, score, edge_quality, cloud_quality, prompt)");
  cv_cmd->footer(
      "Example (a shorter form of how the shipped model's settings were chosen; the full\n"
      "command is in docs/ROUTER.md):\n"
      "  foreshore router cv --data ../shared/data/router-data/routellm/mmlu \\\n"
      "      --drop-subjects high_school_mathematics --l2 0.03 --l2-hashed 0.003 \\\n"
      "      --train-only-data ../shared/data/router-data/routerbench-subset/mbpp_train.csv \\\n"
      "      --repeats 10");
  on_run(cv_cmd, [cf] { return cross_validate(*cf); });

  auto sf = std::make_shared<ScoreFlags>();
  CLI::App* score_cmd = router->add_subcommand(
      "score", "Score a prompt (-p, stdin) or a JSONL batch (--input) and explain it");
  score_cmd->add_option("--model", sf->model,
                        "Model file (default: the shipped data/router/complexity-default.json, "
                        "found from the binary's folder)");
  CLI::Option* prompt_opt =
      score_cmd->add_option("-p,--prompt", sf->prompt, "Prompt text (default: read stdin)");
  score_cmd->add_option("--input", sf->input,
                        "Score many prompts: a JSONL file ('-' for stdin), one {\"prompt\": ...} "
                        "per line; prints one JSON line per prompt");
  score_cmd->add_flag("--json", sf->json_out, "Print the result as JSON (full precision)");
  score_cmd->add_option("--perplexity", sf->perplexity,
                        "The edge model's perplexity on the prompt, when measured");
  score_cmd->add_flag("--explain", sf->explain, "Show every feature's value and logit share");
  on_run(score_cmd, [sf, prompt_opt] {
    sf->prompt_given = prompt_opt->count() > 0;
    return score(*sf);
  });
  auto rf = std::make_shared<ReplayFlags>();
  CLI::App* replay_cmd = router->add_subcommand(
      "replay", "Play labelled rows as traffic through the learning router: APGR after N labels");
  add_data_flags(replay_cmd, rf->data);
  replay_cmd->add_option("--model", rf->model,
                         "Base model file (default: the shipped complexity-default.json)");
  replay_cmd
      ->add_option("--labels", rf->labels, "Labels revealed to the learner, from the first rows")
      ->check(CLI::Range(0, 10000000))
      ->capture_default_str();
  replay_cmd
      ->add_option("--order", rf->order,
                   "random: rows shuffled; by-subject: whole subjects one after another")
      ->check(CLI::IsMember({"random", "by-subject"}))
      ->capture_default_str();
  replay_cmd->add_option("--seed", rf->seed, "Order and random-router seed")->capture_default_str();
  replay_cmd->add_option("--subjects", rf->subjects, "all, or the subjects to replay: a,b,c")
      ->capture_default_str();
  replay_cmd->add_option("--target-cloud-share", rf->target_cloud_share,
                         "Recalibrate the threshold to this share of the traffic (default: keep)");
  replay_cmd->add_option("--random-trials", rf->random_trials, "Seeded random routers to average")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  replay_cmd->add_option("--curve-points", rf->curve_points, "Points on the learning curve")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  // The learner's numeric settings: each checked, its default shown in --help.
  const auto learner_setting = [replay_cmd](const std::string& name, auto& value,
                                            const std::string& help, const CLI::Validator& check) {
    replay_cmd->add_option(name, value, help)->check(check)->capture_default_str();
  };
  learner_setting("--learning-rate", rf->learner.learning_rate, "The learner's AdaGrad step",
                  kPositive);
  learner_setting("--l2", rf->learner.l2, "The learner's L2 strength on word weights",
                  kNonNegative);
  learner_setting("--refit-every", rf->learner.refit_every,
                  "Labels between passes over the kept labels (0: never)", kNonNegative);
  learner_setting("--refit-epochs", rf->learner.refit_epochs, "Passes per refit", kNonNegative);
  replay_cmd
      ->add_flag("--neighbours,!--no-neighbours", rf->learner.neighbours,
                 "Blend in the similarity-weighted estimate over the kept labels (on by default)")
      ->capture_default_str();
  replay_cmd
      ->add_flag("--form-features,!--no-form-features", rf->learner.form_features,
                 "Fit per-deployment weights on the prompt's form (length, numbers, equations, "
                 "step cues), measured against the labelled prompts, on what the words leave "
                 "unexplained (on by default)")
      ->capture_default_str();
  learner_setting(
      "--form-learning-rate", rf->learner.form_learning_rate,
      "AdaGrad step of the form weights (decisions use their average over the last 1,000 labels)",
      kNonNegative);
  learner_setting("--form-l2", rf->learner.form_l2, "L2 on the form weights, per label",
                  kNonNegative);
  learner_setting("--neighbour-k", rf->learner.neighbour_k, "Most similar labels that vote",
                  kPositive);
  learner_setting("--neighbour-gamma", rf->learner.neighbour_gamma,
                  "A neighbour's vote weighs exp(gamma (cosine - 1))", kNonNegative);
  learner_setting("--neighbour-prior", rf->learner.neighbour_prior,
                  "Pseudo-votes of the residual model's own estimate", kNonNegative);
  learner_setting("--common-word-share", rf->learner.common_word_share,
                  "Words in more than this share of the labels are not searched",
                  CLI::Range(0.0, 1.0));
  learner_setting("--blend-learning-rate", rf->learner.blend_learning_rate,
                  "AdaGrad step of the neighbour estimate's blend weight (0: fixed)", kNonNegative);
  learner_setting("--initial-blend", rf->learner.initial_blend, "The blend weight before any label",
                  CLI::Range(0.0, 1.0));
  replay_cmd
      ->add_option("--topics", rf->learner.topics,
                   "Topics the kept labels are clustered into (0: none)")
      ->capture_default_str();
  learner_setting("--topic-prior", rf->learner.topic_prior,
                  "Pseudo-labels at the overall mean gain in each topic's mean", kNonNegative);
  learner_setting("--topic-iterations", rf->learner.topic_iterations,
                  "k-means passes per rebuild of the topics", kNonNegative);
  replay_cmd
      ->add_option("--initial-topic-weight", rf->learner.initial_topic_weight,
                   "The topic logit's weight in the residual before any label")
      ->capture_default_str();
  replay_cmd->add_flag("--json", rf->json_out, "Print the results as JSON");
  replay_cmd->add_option("--svg", rf->svg, "Draw the learning curve into this SVG file");
  replay_cmd->footer(
      "Example (1,500 labels from MMLU traffic, then scored on the rest):\n"
      "  foreshore router replay --data ../shared/data/router-data/routellm/mmlu \\\n"
      "      --labels 1500 --order random --svg learning.svg");
  on_run(replay_cmd, [rf] { return replay(*rf); });
  auto stf = std::make_shared<StatusFlags>();
  CLI::App* status_cmd = router->add_subcommand(
      "status", "What the gateway's learning router has learned (its state file); roll it back");
  status_cmd->add_option("--state", stf->state, "The routing.learning.state file")->required();
  status_cmd->add_option("--model", stf->model,
                         "The complexity model it learned over (default: the shipped one)");
  status_cmd->add_option("--rollback", stf->rollback,
                         "Restore this earlier version (stop the gateway first)");
  status_cmd->add_flag("--json", stf->json_out, "Print as JSON");
  on_run(status_cmd, [stf] { return status(*stf); });
}

}  // namespace foreshore::cli
