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
#include "cli/router_data.h"
#include "route/complexity.h"
#include "sim/sim.h"
#include "training/router_training.h"

namespace foreshore::cli {
namespace {

using namespace router_cmd;
using route::LabelledPrompt;
using route::RoutingMetrics;

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
  // Scores that tie (labels with no contrast, one prompt repeated) leave no
  // threshold between them: the share asked for cannot be met.
  if (std::abs(report.calibrated_cloud_share - f.target_cloud_share) > 0.1) {
    std::fprintf(stderr,
                 "warning: no threshold sends --target-cloud-share %.2f of these prompts to the "
                 "cloud (the nearest sends %.1f%%): the model scores them nearly alike; check "
                 "that the labels differ between prompts (mean label %.3f)\n",
                 f.target_cloud_share, report.calibrated_cloud_share * 100.0,
                 model->info().mean_label);
  }
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
  char name[96];
  std::snprintf(name, sizeof name, "complexity router (APGR %.3f)", m.apgr);
  chart.add(name, "#1f5fbf", curve(m.curve), false);
  chart.add("random router (APGR 0.5)", "#888888", {{0.0, m.edge_quality}, {1.0, m.cloud_quality}},
            true);
  std::snprintf(name, sizeof name, "oracle (APGR %.3f)", oracle.apgr);
  chart.add(name, "#22aa22", curve(oracle.curve), false);
  chart.add("edge only", "#aaaaaa", level(m.edge_quality), true);
  chart.add("cloud only", "#cc3333", level(m.cloud_quality), true);
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

  const bool cloud_better = cloud_is_better(*m);
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
                {"random", random_json(*random, f.random_trials, cloud_better)},
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
  print_comparison_header(*m);
  print_router_row("complexity", *m);
  print_random_row(*random, f.random_trials, cloud_better);
  print_router_row("oracle", *oracle);
  std::printf("\n");
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
  router_cmd::add_router_learning_commands(router);
}

}  // namespace foreshore::cli