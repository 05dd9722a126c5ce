// Training and evaluating the complexity model from labelled prompts: reading
// the labelled data sets (RouteLLM MMLU CSVs, RouterBench CSVs, MT-Bench
// judgements, JSONL), fitting the logistic model, calibrating its threshold to
// a target cloud share, and scoring a router RouteLLM's way (APGR, CPT).
//
// Its own library (fsh_training), which only the `foreshore router` commands,
// their tests and benchmarks link: the gateway and libforeshore route with a
// trained model and never carry the trainer (tests check libforeshore.so).
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "common/result.h"
#include "route/complexity.h"

namespace foreshore::route {

// How the two tiers did on one prompt.
enum class Outcome : uint8_t {
  kCloudBetter,  // edge inadequate, cloud fixes it
  kBothGood,     // edge adequate (and cloud no better)
  kBothBad,      // edge inadequate, cloud no better
  kEdgeBetter,   // edge adequate, cloud worse
};

struct LabelledPrompt {
  std::string prompt;
  std::string subject;  // MMLU subject, RouterBench eval_name, MT-Bench category, or ""
  // Quality of each tier's answer on the data set's own scale (1/0 for
  // correctness, 1-10 for judge scores); evaluation averages these.
  double edge_quality = 0.0;
  double cloud_quality = 0.0;
  Outcome outcome = Outcome::kBothGood;
  std::optional<double> edge_perplexity;
};

enum class DataFormat { kAuto, kCsv, kJsonl };

struct DataOptions {
  DataFormat format = DataFormat::kAuto;
  // CSV columns holding the edge (weak) and cloud (strong) model's 0/1 result;
  // empty: Mixtral-8x7B / GPT-4-1106, the pair of the RouteLLM data, under
  // each data set's column names, so that data sets can be mixed.
  std::string weak_column;
  std::string strong_column;
  // MT-Bench judgements: the model names acting as edge and cloud.
  std::string weak_model = "mistralai/Mixtral-8x7B-Instruct-v0.1";
  std::string strong_model = "gpt-4-1106-preview";
  // JSONL files of prompts never to train or evaluate on (fields eval_prompt,
  // train_prompt or prompt). Every contaminated_prompts.jsonl in a data
  // file's tree (the router-data folder above it, else its own folder) is
  // always applied as well.
  std::vector<std::string> exclude_files;
  // Keep only these subjects (empty: all) / drop these subjects.
  std::vector<std::string> only_subjects;
  std::vector<std::string> drop_subjects;
};

struct LoadReport {
  std::vector<std::string> files;  // data files read, in order
  int64_t rows = 0;                // rows kept
  int64_t excluded_contaminated = 0;
  int64_t dropped_by_subject = 0;
  int64_t skipped_unlabelled = 0;  // rows without a usable label
  // Every subject the files hold, before the subject filters: to refuse a
  // misspelt --subjects/--drop-subjects name instead of matching nothing.
  std::set<std::string> subjects_found;
  // Paths given more than once (directly or through a folder); read once.
  std::vector<std::string> duplicate_files;
  // The exclusion lists applied: --exclude files and the
  // contaminated_prompts.jsonl files of the data's tree.
  std::vector<std::string> exclusion_lists;
};

// Reads every path (a file, or a folder: its *.csv, *.jsonl and MT-Bench
// judgements, sorted). Formats:
//  - CSV with a `prompt` column and two 0/1 (or True/False) result columns;
//    a file named mmlu_<subject>.csv gets that subject.
//  - JSONL: {"prompt": ..., "edge_ok": bool} or {"prompt": ..., "scores":
//    {"edge": x, "cloud": y}}, optional "subject" and "edge_perplexity".
//  - MT-Bench judgements.jsonl (with question.jsonl beside it).
Result<std::vector<LabelledPrompt>> load_labelled_prompts(const std::vector<std::string>& paths,
                                                          const DataOptions& options,
                                                          LoadReport* report = nullptr);

// The 38 MMLU subjects of the RouteLLM data, sorted, and the fixed evaluation
// split: every fourth subject in that order (index % 4 == 3), 9 of 38.
const std::vector<std::string>& routellm_mmlu_subjects();
const std::vector<std::string>& default_holdout_subjects();

// How outcomes become training labels. The model predicts the label's mean.
enum class LabelRule {
  kWeakWrong,  // 1 when the edge is inadequate, whatever the cloud did
  kCloudWins,  // 1 only when the cloud is better (both-bad counts as 0)
  kGain,       // 1 cloud better, 0.5 tie, 0 edge better: E[gain of escalating]
};
std::string_view label_rule_name(LabelRule rule);
std::optional<LabelRule> parse_label_rule(std::string_view name);
double label_for(Outcome outcome, LabelRule rule);

struct TrainOptions {
  HashingSpec hashing;
  LabelRule label = LabelRule::kGain;
  double l2_dense = 1e-3;   // per-example L2 strength on standardized dense weights
  double l2_hashed = 1e-3;  // on hashed n-gram weights
  double target_cloud_share = 0.3;
  // The threshold is set on out-of-fold scores from this many extra fits
  // (rows split by index); below 2, on the final model's own training scores.
  int calibration_folds = 5;
  int max_iterations = 400;
  ComplexityModelInfo info;  // provenance copied into the model file
};

struct TrainReport {
  int iterations = 0;
  double final_loss = 0.0;
  bool converged = false;
  int calibration_folds = 0;            // 0: calibrated in-sample
  double calibrated_cloud_share = 0.0;  // share of the calibration scores sent to cloud
  double train_cloud_share = 0.0;       // share of the final model's training scores
};

// Deterministic: the same rows and options give the same file, bit for bit.
Result<ComplexityModel> train_complexity_model(const std::vector<LabelledPrompt>& rows,
                                               const TrainOptions& options,
                                               TrainReport* report = nullptr);

// ---- evaluation ----------------------------------------------------------------

// How well these scores route the rows (route/complexity.h evaluate_routing,
// on each row's edge and cloud quality).
Result<RoutingMetrics> evaluate_routing(std::span<const double> scores,
                                        std::span<const LabelledPrompt> rows);

// A router that picks uniformly at random: `trials` seeded permutations.
struct RandomBaseline {
  double apgr_mean = 0.0, apgr_lo = 0.0, apgr_hi = 0.0;  // mean and 2.5/97.5 percentiles
  double cpt50_mean = 0.0, cpt80_mean = 0.0;
};
Result<RandomBaseline> random_baseline(std::span<const LabelledPrompt> rows, int trials,
                                       uint64_t seed);

// The best any router could do: cloud exactly where it helps most.
Result<RoutingMetrics> oracle_routing(std::span<const LabelledPrompt> rows);

// ---- cross-validation -------------------------------------------------------------

struct CrossValidationOptions {
  int folds = 5;
  int repeats = 1;  // partitions, each a different shuffle of the subjects
  // Whole subjects per fold, so every fold is scored by a model that never saw
  // its subjects: the estimate for traffic from new topics. Rows without a
  // subject are split by index. false: rows are split at random.
  bool by_subject = true;
  uint64_t seed = 20240701;
};

struct CrossValidationFold {
  std::vector<std::string> subjects;  // by-subject folds only
  int64_t rows = 0;
  std::optional<double> apgr;  // absent where the tiers tie on the fold
};

struct CrossValidationRepeat {
  RoutingMetrics pooled;  // all out-of-fold scores on one curve
  std::vector<CrossValidationFold> folds;
  // Per input row: its out-of-fold score and the fold that scored it.
  std::vector<double> scores;
  std::vector<int> fold_of;
  // Gap-weighted mean of each subject's own APGR: what the scores rank within
  // a subject, with the differences between subjects taken out.
  std::optional<double> within_subject_apgr;
};

struct CrossValidationReport {
  std::vector<CrossValidationRepeat> repeats;
  double mean_apgr = 0.0;  // mean over repeats of the pooled out-of-fold APGR
};

// Fits one model per fold on the other folds (plus `extra_training`, rows that
// are trained on and never scored), scores the fold, and evaluates the
// out-of-fold scores pooled over all folds, per fold and per subject.
Result<CrossValidationReport> cross_validate(const std::vector<LabelledPrompt>& rows,
                                             std::span<const LabelledPrompt> extra_training,
                                             const TrainOptions& options,
                                             const CrossValidationOptions& cv);

}  // namespace foreshore::route
