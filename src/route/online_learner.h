// Online adaptation of the complexity signal to one deployment's own traffic.
//
// The shipped complexity model ranks prompts by what kind of work they look
// like; on a deployment's own topics it can be near chance (docs/ROUTER.md).
// The learner adds a residual logistic model over the same hashed word
// features, fitted from the labels the gateway collects (client feedback,
// cascade outcomes, shadow verdicts, imported files), so that what it learns
// about one question carries to questions sharing its words; and on top of
// it, weights on the prompt's form (length, numbers, equations, step cues:
// what makes one question of a kind harder than another), measured against
// the deployment's own prompts. It also keeps the threshold at a target
// cloud share of the recent traffic.
//
// Beside the residual, a similarity-weighted estimate over the kept labels
// (RouteLLM's SW ranking on words): a prompt's most similar labelled prompts
// (TF-IDF cosine over the hashed words) vote with weight exp(gamma (sim - 1)),
// shrunk toward the residual's own estimate. How much it counts is a blend
// weight fitted online on each label before the label is learned, so with few
// or unhelpful labels the learner stays with the residual and the base model.
//
// Decisions read an immutable snapshot through one atomic load; labels are
// queued and applied on the learner's own thread, so a label never delays a
// decision. The state is saved as a versioned JSON file; earlier versions are
// kept beside it for rollback.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/result.h"
#include "route/complexity.h"

namespace foreshore::route {

// Where a label came from; counted separately in `router status` and /metrics.
enum class LabelSource : uint8_t { kFeedback, kCascade, kShadow, kImport, kCount };
inline constexpr int kLabelSourceCount = static_cast<int>(LabelSource::kCount);
std::string_view label_source_name(LabelSource source);

// One label: a prompt's features (hashed words only: no raw text is kept) and
// the expected gain of sending it to the cloud, in [0, 1] (the `gain` rule of
// training/router_training.h: 1 cloud better, 0.5 tie, 0 edge better).
struct LearnerLabel {
  ComplexityFeatures features;
  double gain = 0.5;
  LabelSource source = LabelSource::kFeedback;
  // Both tiers' quality, where the label knows them (shadow verdicts and
  // imported files): they feed the learner's own APGR estimate.
  std::optional<double> edge_quality;
  std::optional<double> cloud_quality;
};

struct LearnerOptions {
  // AdaGrad step size of the per-label update and of the optional refits.
  // Chosen by `router replay` on 28 MMLU subjects (not the 9 it is reported
  // on): 0.05-0.1 with L2 0.03-0.1 gave 0.62 after 1,500 labels, 0.3 0.57.
  double learning_rate = 0.1;
  // L2 strength on the residual's word weights, per label.
  double l2 = 0.03;
  // Every `refit_every` labels (0: never), `refit_epochs` passes over the
  // kept labels in seeded random order. Off by default: in the same replay
  // they overfit the first labels (8 passes every 25 labels: 0.56), and one
  // pass every 500 changed nothing.
  int refit_every = 0;
  int refit_epochs = 1;
  size_t max_kept_labels = 5000;  // oldest dropped first: traffic drifts
  // The similarity-weighted estimate (see the top of this file); false ranks
  // by the residual alone. Its settings were chosen by `router replay` on
  // MMLU subjects other than the 9 it is reported on, and RouterBench
  // (docs/ROUTER.md): they were the ones no worse than the residual alone
  // on any of those sets, in random or by-subject order.
  bool neighbours = true;
  // Per-deployment weights on the base model's dense form features in the
  // residual: the shipped model's weights on them were fitted on chat data,
  // and within one kind of question (math word problems, say) length and
  // the count of numbers and steps are what rank difficulty. The values are
  // standardized against the kept labels (where this deployment's prompts
  // sit, not where chat prompts do), the weights are fitted on what the word
  // weights leave unexplained, and decisions use their average over the
  // last labels. false: words only. Step and L2 chosen on the development
  // sets of docs/ROUTER.md ("Form features, fourth pass").
  bool form_features = true;
  double form_learning_rate = 0.2;  // AdaGrad step of the form weights
  double form_l2 = 0.3;             // L2 on the form weights, per label
  size_t neighbour_k = 256;         // most similar labels that vote
  double neighbour_gamma = 6.0;     // vote weight exp(gamma (cosine - 1))
  // Pseudo-votes of the residual's own estimate: few or dissimilar neighbours
  // move the estimate little.
  double neighbour_prior = 3.0;
  // Words in more than this share of the kept labels take no part in the
  // search: it bounds its cost. (Dropping words in more than 5% cost about
  // 0.005 APGR in the tuning replays: topic words of a subject are common.)
  double common_word_share = 0.5;
  // Topics: the kept labels clustered by their words (spherical k-means over
  // their TF-IDF vectors, rebuilt with the neighbour index), each topic's
  // mean gain shrunk toward the mean of all kept labels by `topic_prior`
  // pseudo-labels. A prompt's nearest topic adds its logit, centred on the
  // overall mean, times a weight the residual fits online (from
  // `initial_topic_weight`). Subject-level means are where most of the gain
  // of MMLU-style traffic is (docs/ROUTER.md). 0 topics: off.
  size_t topics = 0;
  double topic_prior = 20.0;
  int topic_iterations = 8;
  double initial_topic_weight = 1.0;
  // AdaGrad step of the blend weight (0: it stays at `initial_blend`).
  double blend_learning_rate = 0.05;
  double initial_blend = 0.0;
  // The threshold sends this share of the recent traffic to the cloud; < 0
  // keeps the base model's threshold.
  double target_cloud_share = -1.0;
  size_t traffic_window = 2000;   // recent decisions the threshold is set on
  size_t estimate_window = 2000;  // labels in the learner's own APGR estimate
  size_t max_queue = 10000;       // labels waiting for the thread; beyond, dropped
  uint64_t seed = 20240701;
};

// The kept labels as an inverted index over their hashed words, rebuilt
// every few labels by the learner's thread. Immutable once published.
struct NeighbourIndex {
  std::vector<float> idf;         // per bucket; 0 for words in no kept label
  std::vector<uint32_t> offsets;  // bucket b's postings: [offsets[b], offsets[b + 1])
  std::vector<std::pair<uint32_t, float>> postings;  // (label, its unit TF-IDF value)
  std::vector<float> gains;                          // per label
  // The topics (LearnerOptions::topics): unit centroids, bucket-major
  // ([bucket * topics + topic]) so a prompt's words read them in order.
  size_t topics = 0;
  std::vector<float> centroids;
  std::vector<float> topic_logits;  // per topic: logit of its shrunk mean - logit of all
};

// What decisions read. Immutable once published.
struct LearnerSnapshot {
  uint64_t version = 0;  // labels applied
  double threshold = 0.5;
  double bias = 0.0;           // added to the base logit
  double base_scale = 1.0;     // multiplies the base logit
  std::vector<float> weights;  // per hashed bucket, same hashing as the base
  // Per dense feature: the form weights decisions use (an average of the
  // fitted ones over the last labels), and the centre and spread of the kept
  // labels' values that a prompt's value is measured against.
  DenseVector form_weights{};
  DenseVector form_centre{};
  DenseVector form_spread = [] {
    DenseVector v{};
    v.fill(1.0);
    return v;
  }();
  // The similarity-weighted estimate's logit replaces this share of the
  // residual's (0: the residual alone).
  double blend = 0.0;
  // Multiplies the nearest topic's logit in the residual.
  double topic_weight = 1.0;
  std::shared_ptr<const NeighbourIndex> neighbours;  // null until labels are kept
};

struct LearnerStats {
  std::array<int64_t, kLabelSourceCount> labels{};  // applied, per source
  int64_t dropped = 0;                              // queue full
  uint64_t version = 0;
  double threshold = 0.5;
  // The neighbour estimate's share of the score (LearnerSnapshot::blend) and
  // the labels it searches.
  double blend = 0.0;
  int64_t kept_labels = 0;
  // What it has learned of the prompt's form: each form feature's weight
  // (logit per spread of the deployment's own prompts), largest first; empty
  // when the form features are off.
  std::vector<std::pair<std::string, double>> form_weights;
  // APGR of the learner's own scores on recent labels, each scored before
  // the learner trained on it (prequential); absent until enough labels
  // with both tiers' quality, and where the tiers tie.
  std::optional<double> estimated_apgr;
  int64_t estimate_rows = 0;
};

class OnlineLearner {
 public:
  // `base` is the shipped (or configured) model; it is never modified.
  OnlineLearner(std::shared_ptr<const ComplexityModel> base, LearnerOptions options);
  ~OnlineLearner();
  OnlineLearner(const OnlineLearner&) = delete;
  OnlineLearner& operator=(const OnlineLearner&) = delete;

  // ---- the request path: lock-free reads of the current snapshot ----
  double score(const ComplexityFeatures& features) const;
  double score(std::string_view prompt, std::optional<double> edge_perplexity = {}) const;
  double threshold() const;
  // True when the threshold follows the traffic (a target cloud share).
  bool recalibrates() const { return options_.target_cloud_share >= 0.0; }
  std::shared_ptr<const LearnerSnapshot> snapshot() const { return snapshot_.load(); }
  const ComplexityModel& base() const { return *base_; }

  // ---- labels: queued for the learner's thread (start()) ----
  // Returns false when the queue is full (the label is dropped and counted).
  bool submit(LearnerLabel label);
  // A routed request's features, for recalibrating the threshold to the
  // traffic; dropped rather than waited for when the learner is busy.
  void observe(ComplexityFeatures features);
  void start();
  void stop();  // drains the queue, then joins
  // Blocks until every label submitted so far is applied (tests, shutdown).
  void flush();

  // ---- synchronous use (replay, import): not concurrently with start() ----
  void apply(const LearnerLabel& label);
  void observe_now(const ComplexityFeatures& features);

  LearnerStats stats() const;

  // ---- persistence ----
  // Writes the state to `path` atomically. The file it replaces is kept as
  // `path`.v<version> (the newest `keep` of them), for rollback().
  Status save(const std::string& path, int keep = 3) const;
  // Restores a saved state; refused when it was learned over a base model
  // with other hashing (its weights would mean other words).
  Status load(const std::string& path);
  std::string to_json() const;
  Status parse(std::string_view json_text, std::string_view source);

 private:
  struct Kept {
    std::vector<std::pair<uint32_t, float>> hashed;
    DenseVector form{};  // the base model's standardized dense features
    double base_logit = 0.0;
    double gain = 0.5;
  };
  struct Estimate {
    double score = 0.0, edge = 0.0, cloud = 0.0;
  };
  double base_logit(const ComplexityFeatures& f) const;
  double residual(const LearnerSnapshot& s, double base_logit, const DenseVector& form,
                  const std::vector<std::pair<uint32_t, float>>& hashed) const;
  double residual(const LearnerSnapshot& s, const Kept& k) const {
    return residual(s, k.base_logit, k.form, k.hashed);
  }
  // The residual's word part: base logit, words and topic.
  double words_logit(const LearnerSnapshot& s, double base_logit,
                     const std::vector<std::pair<uint32_t, float>>& hashed) const;
  // The form part with the given weights, on the snapshot's standardization.
  static double form_logit(const LearnerSnapshot& s, const DenseVector& weights,
                           const DenseVector& form);
  static double standardized(const LearnerSnapshot& s, const DenseVector& form, int feature);
  // The features' dense part as the residual reads it (zeros when the form
  // features are off).
  DenseVector form_of(const ComplexityFeatures& f) const;
  // The centred logit of the prompt's nearest topic (0 without topics).
  static double topic_logit(const NeighbourIndex& index,
                            const std::vector<std::pair<uint32_t, float>>& hashed);
  void build_topics(NeighbourIndex& index,
                    const std::vector<std::vector<std::pair<uint32_t, float>>>& unit) const;
  // The logit decisions use: the residual's, blended with the neighbours'.
  double combined(const LearnerSnapshot& s, const std::vector<std::pair<uint32_t, float>>& hashed,
                  double residual_logit) const;
  double neighbour_logit(const NeighbourIndex& index,
                         const std::vector<std::pair<uint32_t, float>>& hashed,
                         double residual_logit) const;
  void fit_blend(const Kept& k, double residual_logit);
  void rebuild_neighbours();
  // Sets the form features' centre and spread from the kept labels.
  void restandardize_form();
  void step(const Kept& k);  // one AdaGrad step on the working weights
  void refit();
  void recalibrate();
  void publish();
  void run();

  std::shared_ptr<const ComplexityModel> base_;
  LearnerOptions options_;
  std::atomic<std::shared_ptr<const LearnerSnapshot>> snapshot_;

  // Working state, owned by whoever applies labels (the thread, or the
  // synchronous caller); `state_mutex_` guards it against stats() and save().
  mutable std::mutex state_mutex_;
  LearnerSnapshot work_;
  std::vector<float> accum_;  // AdaGrad squared-gradient sums per bucket
  DenseVector accum_form_{};  // and per form feature
  // The form weights as fitted (decisions read their average) and the
  // number of steps averaged.
  DenseVector form_fitted_{};
  uint64_t form_steps_ = 0;
  double accum_bias_ = 0.0, accum_scale_ = 0.0, accum_blend_ = 0.0, accum_topic_ = 0.0;
  std::deque<Kept> kept_;
  std::deque<ComplexityFeatures> traffic_;
  std::deque<Estimate> estimates_;
  std::array<int64_t, kLabelSourceCount> labels_{};
  std::mt19937_64 rng_;

  // The queue between the request path and the thread.
  mutable std::mutex queue_mutex_;
  std::condition_variable queue_cv_;
  std::condition_variable idle_cv_;
  std::deque<LearnerLabel> queue_;
  std::deque<ComplexityFeatures> traffic_queue_;
  bool busy_ = false;
  bool stopping_ = false;
  std::atomic<int64_t> dropped_{0};
  std::thread thread_;
};

// The versions rollback can restore for a state file, newest first.
// LearnerStats::form_weights as a JSON object, feature name to weight,
// largest first (for /v1/router/status and `router status --json`).
nlohmann::ordered_json form_weights_json(const LearnerStats& stats);

std::vector<uint64_t> saved_learner_versions(const std::string& path);
// Makes `path`.v<version> the current state file again; the state it
// replaces is kept as `path`.v<its version>, so the rollback can be undone.
Status rollback_learner_state(const std::string& path, uint64_t version);

}  // namespace foreshore::route
