// `foreshore router replay|status`: play labelled rows as traffic through the
// learning router, and show (or roll back) what a gateway's learner learned.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/router_data.h"
#include "route/complexity.h"
#include "route/online_learner.h"
#include "sim/sim.h"
#include "training/router_training.h"

namespace foreshore::cli::router_cmd {
namespace {

using route::LabelledPrompt;
using route::RoutingMetrics;

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
  chart.add("learning router", "#1f5fbf", curve, false);
  char name[96];
  std::snprintf(name, sizeof name, "static model (APGR %.3f)", static_apgr);
  chart.add(name, "#cc7700", level(static_apgr), true);
  chart.add("random, 95% band", "#888888", level(random.apgr_hi), true);
  chart.add("random, 95% band (low)", "#888888", level(random.apgr_lo), true);
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
  const bool cloud_better = cloud_is_better(*learned);
  const auto subjects = distinct_subjects(rows);
  const auto held_subjects = distinct_subjects(held);

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
                {"random", random_json(*random, f.random_trials, cloud_better)},
                {"cloud_better", cloud_better},
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
  print_comparison_header(*learned);
  print_router_row("learning", *learned);
  print_router_row("static (no labels)", *fixed);
  print_random_row(*random, f.random_trials, cloud_better);
  print_router_row("subject means", *by_subject, "   (each row by its subject's true mean gain)");
  print_router_row("subject means, labels", *by_learned_subject,
                   "   (each row by its subject's mean gain on the labels)");
  print_router_row("oracle", *oracle);
  std::printf("\n");
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
  std::optional<uint64_t> rollback;
  bool json_out = false;
};

// What a gateway's learner state file holds; with --rollback, restores an
// earlier version (stop the gateway first: it saves over the file on exit).
int status(const StatusFlags& f) {
  if (f.rollback) {
    if (auto s = route::rollback_learner_state(f.state, *f.rollback); !s.ok()) {
      return fail(s.error());
    }
    std::fprintf(stderr, "[%s is version %llu again; the state it replaced is kept]\n",
                 f.state.c_str(), static_cast<unsigned long long>(*f.rollback));
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

void add_router_learning_commands(CLI::App* router) {
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
  status_cmd
      ->add_option("--rollback", stf->rollback,
                   "Restore this earlier version (stop the gateway first); the state it replaces "
                   "is kept, so it can be restored in turn")
      ->check(CLI::NonNegativeNumber);
  status_cmd->add_flag("--json", stf->json_out, "Print as JSON");
  on_run(status_cmd, [stf] { return status(*stf); });
}

}  // namespace foreshore::cli::router_cmd
