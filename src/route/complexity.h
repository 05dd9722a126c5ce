// Complexity signal: the probability that the edge model's answer to a prompt
// would be inadequate, from cheap text features and a small logistic model
// loaded from a JSON file. Scoring is one pass over the prompt with no heap
// allocation, so it fits inside the router's per-request budget. Also here:
// the threshold that sends a share of scores to the cloud, and how well
// scores route (APGR), which the online learner needs as well as training.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"

namespace foreshore::route {

// Bumped whenever a feature's definition changes; a model file trained on
// another version is refused, because its weights would mean something else.
inline constexpr int kComplexityFeatureVersion = 1;

// The dense (named) features, in model-file order.
enum class DenseFeature : int {
  kLogChars,
  kLogWords,
  kLogTokensEst,
  kLogSentences,
  kLogLines,
  kQuestionMarks,
  kCodeFences,
  kCodePunctDensity,
  kCodeKeywords,
  kDigitShare,
  kMathOps,
  kLatex,
  kEquations,
  kMultiStepCues,
  kNumberedItems,
  kLawTerms,
  kMedicineTerms,
  kFinanceTerms,
  kScienceTerms,
  kMathTerms,
  kNonAsciiShare,
  kAnswerOptions,
  kMeanWordLen,
  kLongWordShare,
  kUpperShare,
  kNegationCues,
  kStemLogChars,
  kOptionLogChars,
  kNumbers,
  kNumericOptions,
  kPipes,
  kHasPerplexity,
  kLogPerplexity,
  kCount,
};
inline constexpr int kDenseFeatureCount = static_cast<int>(DenseFeature::kCount);
using DenseVector = std::array<double, kDenseFeatureCount>;

// Name of a dense feature as written in model files and explanations.
std::string_view dense_feature_name(int index);

// How words are hashed into the sparse part of the feature vector.
struct HashingSpec {
  int bits = 13;            // 2^bits buckets
  uint64_t seed = 0x5357u;  // changes the bucket of every n-gram
  // Word pairs as well as single words: no better in subject-held-out
  // cross-validation on MMLU, and twice the cost, so off by default.
  bool bigrams = false;
};
inline constexpr int kMinHashBits = 8;
inline constexpr int kMaxHashBits = 20;

// Features of one prompt, materialized: for training and explanations. The
// scoring path never builds this.
struct ComplexityFeatures {
  DenseVector dense{};
  // (bucket, value) pairs sorted by bucket, one per bucket. Values are signed
  // n-gram counts scaled by 1/sqrt(number of n-grams), so long and short
  // prompts weigh their vocabulary alike.
  std::vector<std::pair<uint32_t, float>> hashed;
};

// `edge_perplexity`: the edge model's perplexity on the prompt when the caller
// measured it; absent, the perplexity features read 0 ("not measured").
ComplexityFeatures extract_complexity_features(std::string_view prompt, const HashingSpec& hashing,
                                               std::optional<double> edge_perplexity = {});

// Where a model came from, kept in the file so that a decision can be traced
// back to data and settings.
struct ComplexityModelInfo {
  std::string label_rule;         // how training rows became labels
  std::vector<std::string> data;  // training data files
  std::vector<std::string> training_subjects;
  std::vector<std::string> holdout_subjects;  // excluded from training, for eval
  int64_t rows = 0;
  int64_t excluded_contaminated = 0;
  double mean_label = 0.0;  // mean training label (the share of positives for 0/1 labels)
  double l2_dense = 0.0;
  double l2_hashed = 0.0;
  double target_cloud_share = 0.0;  // the share the threshold was calibrated to
  std::string command;              // the command line that produced the file
};

// Per-feature contribution to one decision, for /v1/route explanations.
struct ComplexityExplanation {
  double probability = 0.0;
  double threshold = 0.0;
  bool prefers_cloud = false;
  double bias = 0.0;
  DenseVector dense{};               // raw feature values
  DenseVector dense_contribution{};  // their share of the logit
  double hashed_contribution = 0.0;  // all word n-grams together
};

class ComplexityModel {
 public:
  ComplexityModel() = default;

  // Builds a model from standardized-space weights: the dense weights apply
  // to (x - mean) / scale. `hashed` has 2^hashing.bits entries.
  static Result<ComplexityModel> create(HashingSpec hashing, double bias, DenseVector dense_weights,
                                        DenseVector dense_mean, DenseVector dense_scale,
                                        std::vector<float> hashed, double threshold,
                                        ComplexityModelInfo info);

  // Reads and validates a model file; errors name the file and the field.
  static Result<ComplexityModel> load(const std::string& path);
  static Result<ComplexityModel> parse(std::string_view json_text, std::string_view source);
  std::string to_json() const;
  Status save(const std::string& path) const;

  // P(edge answer inadequate). Allocation-free; safe to call concurrently.
  double score(std::string_view prompt, std::optional<double> edge_perplexity = {}) const;
  double score(const ComplexityFeatures& features) const;
  ComplexityExplanation explain(std::string_view prompt,
                                std::optional<double> edge_perplexity = {}) const;
  // Dense features on the scale the model's weights apply to, (x - mean) /
  // scale, bounded to +-kStandardizedBound so one extreme prompt cannot
  // swing a weight fitted on them.
  static constexpr double kStandardizedBound = 5.0;
  DenseVector standardized(const DenseVector& dense) const;

  // Cloud when score >= threshold.
  double threshold() const { return threshold_; }
  bool prefers_cloud(double probability) const { return probability >= threshold_; }
  // Rounded as the file stores it; refused outside [0, 1].
  Status set_threshold(double threshold);

  const HashingSpec& hashing() const { return hashing_; }
  const ComplexityModelInfo& info() const { return info_; }
  ComplexityModelInfo& mutable_info() { return info_; }

 private:
  HashingSpec hashing_;
  double bias_ = 0.0;            // standardized space, as stored
  DenseVector dense_weights_{};  // standardized space, as stored
  DenseVector dense_mean_{};
  DenseVector dense_scale_{};
  std::vector<float> hashed_;
  double threshold_ = 0.5;
  ComplexityModelInfo info_;
  // Standardization folded in at construction so scoring is one dot product.
  double raw_bias_ = 0.0;
  DenseVector raw_dense_weights_{};
};

// The threshold that sends `share` of these scores to the cloud (score >=
// threshold), as near as ties allow. share 0 gives a threshold above every
// score (1.0 when they are all below it).
double calibrate_threshold(std::vector<double> scores, double share);

// ---- how well scores route: what training evaluates and the online learner
// estimates ----------------------------------------------------------------

struct CurvePoint {
  double cloud_share = 0.0;
  double quality = 0.0;
  double threshold = 0.0;  // route to cloud when score >= threshold
};

struct RoutingMetrics {
  int64_t rows = 0;
  double edge_quality = 0.0;   // all on edge
  double cloud_quality = 0.0;  // all on cloud
  double auc = 0.0;            // area under quality vs cloud share, share in [0, 1]
  double apgr = 0.0;           // (auc - edge) / (cloud - edge)
  // Cloud share needed to recover 50% / 80% of the edge->cloud gap; absent
  // when the curve never gets there (the cloud is not better on this data).
  std::optional<double> cpt50;
  std::optional<double> cpt80;
  std::vector<CurvePoint> curve;  // one point per distinct threshold, share ascending
};

// Each tier's answer quality on one row, on the data's own scale.
struct TierQuality {
  double edge = 0.0;
  double cloud = 0.0;
};

// Sweeps the threshold over all scores: the top-k scored rows go to the
// cloud. Rows with equal scores move together (a threshold cannot split
// them). Fails when the two tiers have equal quality (APGR undefined).
Result<RoutingMetrics> evaluate_routing(std::span<const double> scores,
                                        std::span<const TierQuality> rows);

// Cloud share where a curve first reaches edge + fraction * (cloud - edge),
// interpolating linearly between points.
std::optional<double> cloud_share_to_recover(const std::vector<CurvePoint>& curve, double edge,
                                             double cloud, double fraction);

}  // namespace foreshore::route
