#include "route/online_learner.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace foreshore::route {
namespace {

using json = nlohmann::ordered_json;

constexpr std::string_view kFormat = "foreshore.router-learner";
// 2 added the blend weight; version 1 files load with the blend at 0.
// 3 added the topic weight; earlier files load with its initial value.
// 4 added the form weights and each kept label's form features; earlier
// files load with the weights at 0 and their kept labels without form.
// 5 measures the form against the kept labels and averages its weights;
// version 4 form weights (on the base model's scale) load as 0.
constexpr int kFileVersion = 5;
// The form weights decisions use are the average of the fitted ones over
// about this many labels: the step that learns math word problems' form
// within a few hundred labels is noisy label to label.
constexpr double kFormAverageLabels = 1000.0;
// The least spread a form feature is measured against (in the base model's
// standard deviations): a value the kept labels all share would otherwise
// turn any difference into the bound.
constexpr double kMinFormSpread = 0.01;
// Fewer labels than this give an APGR estimate too noisy to show.
constexpr size_t kMinEstimateRows = 50;
// Labels between threshold recalibrations: rescoring the traffic window
// (2,000 prompts) after every label would cost more than the label itself.
constexpr uint64_t kRecalibrateEvery = 25;
// Labels between rebuilds of the neighbour index, for the same reason: a
// rebuild reads every kept label.
constexpr uint64_t kReindexEvery = 25;
// Below this many labels holding it, a word is searched however common:
// among few labels the share says nothing, and the search is cheap.
constexpr double kMinCommonPostings = 50.0;
// The most postings one neighbour search reads: it bounds a decision's cost
// whatever the traffic (bench/online_learner_bench.cpp). In the replays of
// docs/ROUTER.md (up to 1,500 labels) it binds only on a few long prompts.
constexpr size_t kMaxPostingsVisited = 12000;

// The dense features the residual weighs: the prompt's size and how much
// working it asks for. The topic-word counts (law, medicine, code...) are
// left to the word weights, which carry the same and more.
constexpr DenseFeature kFormFeatures[] = {
    DenseFeature::kLogChars,      DenseFeature::kLogWords,      DenseFeature::kLogTokensEst,
    DenseFeature::kLogSentences,  DenseFeature::kLogLines,      DenseFeature::kQuestionMarks,
    DenseFeature::kDigitShare,    DenseFeature::kMathOps,       DenseFeature::kEquations,
    DenseFeature::kMultiStepCues, DenseFeature::kNumberedItems, DenseFeature::kNumbers};

double sigmoid(double z) {
  return 1.0 / (1.0 + std::exp(-z));
}

double logit(double p) {
  p = std::clamp(p, 1e-6, 1.0 - 1e-6);
  return std::log(p / (1.0 - p));
}

}  // namespace

std::string_view label_source_name(LabelSource source) {
  switch (source) {
    case LabelSource::kFeedback:
      return "feedback";
    case LabelSource::kCascade:
      return "cascade";
    case LabelSource::kShadow:
      return "shadow";
    case LabelSource::kImport:
      return "import";
    case LabelSource::kCount:
      break;
  }
  return "unknown";
}

OnlineLearner::OnlineLearner(std::shared_ptr<const ComplexityModel> base, LearnerOptions options)
    : base_(std::move(base)), options_(options), rng_(options.seed) {
  const size_t buckets = size_t{1} << base_->hashing().bits;
  work_.weights.assign(buckets, 0.0f);
  work_.threshold = base_->threshold();
  work_.blend = options_.initial_blend;
  work_.topic_weight = options_.initial_topic_weight;
  accum_.assign(buckets, 0.0f);
  publish();
}

OnlineLearner::~OnlineLearner() {
  stop();
}

double OnlineLearner::base_logit(const ComplexityFeatures& f) const {
  return logit(base_->score(f));
}

double OnlineLearner::score(const ComplexityFeatures& f) const {
  const auto s = snapshot_.load();
  return sigmoid(combined(*s, f.hashed, residual(*s, base_logit(f), form_of(f), f.hashed)));
}

double OnlineLearner::score(std::string_view prompt, std::optional<double> edge_perplexity) const {
  return score(extract_complexity_features(prompt, base_->hashing(), edge_perplexity));
}

double OnlineLearner::threshold() const {
  return snapshot_.load()->threshold;
}

DenseVector OnlineLearner::form_of(const ComplexityFeatures& f) const {
  DenseVector form{};
  if (!options_.form_features) return form;
  const DenseVector z = base_->standardized(f.dense);
  for (DenseFeature d : kFormFeatures) form[static_cast<int>(d)] = z[static_cast<int>(d)];
  return form;
}

double OnlineLearner::standardized(const LearnerSnapshot& s, const DenseVector& form, int feature) {
  return std::clamp((form[feature] - s.form_centre[feature]) / s.form_spread[feature],
                    -ComplexityModel::kStandardizedBound, ComplexityModel::kStandardizedBound);
}

double OnlineLearner::form_logit(const LearnerSnapshot& s, const DenseVector& weights,
                                 const DenseVector& form) {
  double z = 0.0;
  for (DenseFeature d : kFormFeatures) {
    const int i = static_cast<int>(d);
    if (weights[i] != 0.0) z += weights[i] * standardized(s, form, i);
  }
  return z;
}

double OnlineLearner::words_logit(const LearnerSnapshot& s, double base,
                                  const std::vector<std::pair<uint32_t, float>>& hashed) const {
  double z = s.bias + s.base_scale * base;
  for (const auto& [bucket, value] : hashed) z += value * s.weights[bucket];
  if (s.neighbours && s.neighbours->topics > 0)
    z += s.topic_weight * topic_logit(*s.neighbours, hashed);
  return z;
}

double OnlineLearner::residual(const LearnerSnapshot& s, double base, const DenseVector& form,
                               const std::vector<std::pair<uint32_t, float>>& hashed) const {
  return words_logit(s, base, hashed) + form_logit(s, s.form_weights, form);
}

// The nearest centroid by cosine; the prompt's own norm does not change
// which one that is, so it is not computed.
double OnlineLearner::topic_logit(const NeighbourIndex& index,
                                  const std::vector<std::pair<uint32_t, float>>& hashed) {
  const size_t topics = index.topics;
  thread_local std::vector<float> dot;
  dot.assign(topics, 0.0f);
  for (const auto& [bucket, value] : hashed) {
    const float q = value * index.idf[bucket];
    if (q == 0.0f) continue;
    const float* c = &index.centroids[static_cast<size_t>(bucket) * topics];
    for (size_t t = 0; t < topics; ++t) dot[t] += q * c[t];
  }
  const auto best = std::max_element(dot.begin(), dot.end());
  if (*best <= 0.0f) return 0.0;
  return index.topic_logits[static_cast<size_t>(best - dot.begin())];
}

// Spherical k-means over the kept labels' unit TF-IDF vectors, seeded by
// k-means++ (cosine distance) from a generator fixed by the options' seed
// and the labels applied, so a replay is repeatable.
void OnlineLearner::build_topics(
    NeighbourIndex& index, const std::vector<std::vector<std::pair<uint32_t, float>>>& unit) const {
  const size_t n = unit.size();
  const size_t topics = std::min(options_.topics, n);
  const size_t buckets = index.idf.size();
  index.topics = topics;
  index.centroids.assign(buckets * topics, 0.0f);
  index.topic_logits.assign(topics, 0.0f);
  if (topics == 0) return;
  std::mt19937_64 rng(options_.seed ^ (work_.version * 0x9E3779B97F4A7C15ULL));
  // k-means++: each next seed drawn with weight 1 - its best cosine so far.
  std::vector<double> best(n, 0.0);
  std::vector<float> dense(buckets, 0.0f);
  size_t seed = std::uniform_int_distribution<size_t>(0, n - 1)(rng);
  for (size_t t = 0; t < topics; ++t) {
    for (const auto& [bucket, value] : unit[seed]) {
      index.centroids[static_cast<size_t>(bucket) * topics + t] = value;
      dense[bucket] = value;
    }
    double total = 0.0;
    for (size_t i = 0; i < n; ++i) {
      double sim = 0.0;
      for (const auto& [bucket, value] : unit[i]) sim += value * dense[bucket];
      best[i] = std::max(best[i], sim);
      total += 1.0 - best[i];
    }
    for (const auto& [bucket, value] : unit[seed]) dense[bucket] = 0.0f;
    if (total <= 0.0) break;
    double r = std::uniform_real_distribution<double>(0.0, total)(rng);
    for (size_t i = 0; i < n; ++i) {
      r -= 1.0 - best[i];
      if (r <= 0.0) {
        seed = i;
        break;
      }
    }
  }
  std::vector<uint32_t> assigned(n, 0);
  std::vector<float> dot(topics);
  auto assign = [&] {
    for (size_t i = 0; i < n; ++i) {
      std::fill(dot.begin(), dot.end(), 0.0f);
      for (const auto& [bucket, value] : unit[i]) {
        const float* c = &index.centroids[static_cast<size_t>(bucket) * topics];
        for (size_t t = 0; t < topics; ++t) dot[t] += value * c[t];
      }
      assigned[i] = static_cast<uint32_t>(std::max_element(dot.begin(), dot.end()) - dot.begin());
    }
  };
  for (int it = 0; it < options_.topic_iterations; ++it) {
    assign();
    std::fill(index.centroids.begin(), index.centroids.end(), 0.0f);
    for (size_t i = 0; i < n; ++i) {
      for (const auto& [bucket, value] : unit[i]) {
        index.centroids[static_cast<size_t>(bucket) * topics + assigned[i]] += value;
      }
    }
    std::vector<double> norm2(topics, 0.0);
    for (size_t b = 0; b < buckets; ++b) {
      for (size_t t = 0; t < topics; ++t) {
        const double v = index.centroids[b * topics + t];
        norm2[t] += v * v;
      }
    }
    for (size_t b = 0; b < buckets; ++b) {
      for (size_t t = 0; t < topics; ++t) {
        if (norm2[t] > 0.0)
          index.centroids[b * topics + t] /= static_cast<float>(std::sqrt(norm2[t]));
      }
    }
  }
  assign();
  std::vector<double> sum(topics, 0.0), count(topics, 0.0);
  double all = 0.0;
  for (size_t i = 0; i < n; ++i) {
    sum[assigned[i]] += index.gains[i];
    count[assigned[i]] += 1.0;
    all += index.gains[i];
  }
  const double mean = all / static_cast<double>(n);
  const double m = options_.topic_prior;
  for (size_t t = 0; t < topics; ++t) {
    const double shrunk = count[t] + m > 0.0 ? (sum[t] + m * mean) / (count[t] + m) : mean;
    index.topic_logits[t] = static_cast<float>(logit(shrunk) - logit(mean));
  }
}

double OnlineLearner::combined(const LearnerSnapshot& s,
                               const std::vector<std::pair<uint32_t, float>>& hashed,
                               double residual_logit) const {
  if (!s.neighbours || s.blend == 0.0) return residual_logit;
  return residual_logit +
         s.blend * (neighbour_logit(*s.neighbours, hashed, residual_logit) - residual_logit);
}

// The similarity-weighted vote of the most similar kept labels. Only the
// postings of the prompt's words are read (common words have none), so the
// cost grows with the labels sharing its rarer words, not with all of them.
double OnlineLearner::neighbour_logit(const NeighbourIndex& index,
                                      const std::vector<std::pair<uint32_t, float>>& hashed,
                                      double residual_logit) const {
  // Per-thread scratch: decisions on different threads search concurrently.
  thread_local std::vector<float> similarity;
  thread_local std::vector<uint32_t> touched;
  thread_local std::vector<std::pair<float, uint32_t>> found;
  thread_local std::vector<std::pair<uint32_t, uint32_t>> words;  // (postings, word)
  const size_t labels = index.gains.size();
  if (similarity.size() < labels) similarity.resize(labels, 0.0f);
  touched.clear();
  words.clear();
  double norm2 = 0.0;
  for (uint32_t i = 0; i < hashed.size(); ++i) {
    const auto& [bucket, value] = hashed[i];
    const float q = value * index.idf[bucket];
    norm2 += static_cast<double>(q) * q;
    const uint32_t postings = index.offsets[bucket + 1] - index.offsets[bucket];
    if (postings > 0) words.emplace_back(postings, i);
  }
  // Rarest words first, until the budget is spent: they say most about the
  // topic, and the search costs the same however common the prompt's words.
  std::sort(words.begin(), words.end());
  size_t visited = 0;
  for (const auto& [postings, i] : words) {
    if (visited + postings > kMaxPostingsVisited) break;
    visited += postings;
    const auto& [bucket, value] = hashed[i];
    const float q = value * index.idf[bucket];
    for (uint32_t p = index.offsets[bucket]; p < index.offsets[bucket + 1]; ++p) {
      const auto& [label, weight] = index.postings[p];
      if (similarity[label] == 0.0f) touched.push_back(label);
      similarity[label] += q * weight;
    }
  }
  found.clear();
  for (uint32_t label : touched) {
    // A label whose sum came back to 0 is listed twice; the first read clears it.
    if (similarity[label] > 0.0f) found.emplace_back(similarity[label], label);
    similarity[label] = 0.0f;
  }
  if (found.empty() || norm2 <= 0.0) return residual_logit;
  const size_t k = std::min(std::max<size_t>(options_.neighbour_k, 1), found.size());
  std::nth_element(found.begin(), found.begin() + static_cast<std::ptrdiff_t>(k - 1), found.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  const double inv_norm = 1.0 / std::sqrt(norm2);
  const double prior = options_.neighbour_prior;
  double votes = prior, sum = prior * sigmoid(residual_logit);
  for (size_t i = 0; i < k; ++i) {
    const double cosine = std::min(1.0, found[i].first * inv_norm);
    const double w = std::exp(options_.neighbour_gamma * (cosine - 1.0));
    votes += w;
    sum += w * index.gains[found[i].second];
  }
  return logit(sum / votes);
}

// The blend weight is fitted on the label before the label is learned from,
// with the neighbours the decisions had: each step rewards whichever of the
// two estimates ranked this unseen label better.
void OnlineLearner::fit_blend(const Kept& k, double residual_logit) {
  if (!options_.neighbours || !work_.neighbours || options_.blend_learning_rate <= 0.0) return;
  const double toward =
      neighbour_logit(*work_.neighbours, k.hashed, residual_logit) - residual_logit;
  const double z = residual_logit + work_.blend * toward;
  const double g = (sigmoid(z) - k.gain) * toward;
  accum_blend_ += g * g;
  work_.blend -= options_.blend_learning_rate * g / std::sqrt(accum_blend_ + 1e-8);
  work_.blend = std::clamp(work_.blend, 0.0, 1.0);
}

void OnlineLearner::rebuild_neighbours() {
  if ((!options_.neighbours && options_.topics == 0) || kept_.empty()) {
    work_.neighbours.reset();
    return;
  }
  auto index = std::make_shared<NeighbourIndex>();
  const size_t buckets = work_.weights.size();
  const size_t labels = kept_.size();
  std::vector<uint32_t> df(buckets, 0);
  for (const auto& k : kept_) {
    for (const auto& [bucket, value] : k.hashed) ++df[bucket];
  }
  index->idf.assign(buckets, 0.0f);
  const double n = static_cast<double>(labels);
  const auto common =
      static_cast<uint32_t>(std::max(kMinCommonPostings, options_.common_word_share * n));
  index->offsets.assign(buckets + 1, 0);
  for (size_t b = 0; b < buckets; ++b) {
    if (df[b] > 0) index->idf[b] = static_cast<float>(std::log((1.0 + n) / (1.0 + df[b])));
    index->offsets[b + 1] = index->offsets[b] + (df[b] <= common ? df[b] : 0);
  }
  index->postings.resize(index->offsets[buckets]);
  std::vector<uint32_t> fill(index->offsets.begin(), index->offsets.end() - 1);
  index->gains.reserve(labels);
  // Every word's unit TF-IDF value, common ones too, for the topics.
  std::vector<std::vector<std::pair<uint32_t, float>>> unit;
  if (options_.topics > 0) unit.resize(labels);
  for (size_t i = 0; i < labels; ++i) {
    const Kept& k = kept_[i];
    double norm2 = 0.0;
    for (const auto& [bucket, value] : k.hashed) {
      const double v = value * index->idf[bucket];
      norm2 += v * v;
    }
    const double inv = norm2 > 0.0 ? 1.0 / std::sqrt(norm2) : 0.0;
    for (const auto& [bucket, value] : k.hashed) {
      const auto v = static_cast<float>(value * index->idf[bucket] * inv);
      if (options_.topics > 0 && v != 0.0f) unit[i].emplace_back(bucket, v);
      if (df[bucket] > common) continue;
      index->postings[fill[bucket]++] = {static_cast<uint32_t>(i), v};
    }
    index->gains.push_back(static_cast<float>(k.gain));
  }
  build_topics(*index, unit);
  work_.neighbours = std::move(index);
}

void OnlineLearner::restandardize_form() {
  if (kept_.empty()) return;
  DenseVector sum{}, sum2{};
  for (const auto& k : kept_) {
    for (DenseFeature d : kFormFeatures) {
      const int i = static_cast<int>(d);
      sum[i] += k.form[i];
      sum2[i] += k.form[i] * k.form[i];
    }
  }
  const double n = static_cast<double>(kept_.size());
  for (DenseFeature d : kFormFeatures) {
    const int i = static_cast<int>(d);
    const double mean = sum[i] / n;
    work_.form_centre[i] = mean;
    work_.form_spread[i] =
        std::max(std::sqrt(std::max(sum2[i] / n - mean * mean, 0.0)), kMinFormSpread);
  }
}

// Logistic loss on the gain target (a probability, so ties pull toward 0.5),
// AdaGrad per coordinate: frequent words settle, rare ones still move. The
// words learn from their own error, as if there were no form weights, and
// the form weights from what remains: where the form says nothing (most
// MMLU subjects) the words learn as well as alone, and where it says what
// the words cannot (within math word problems) it adds it. Fitted jointly,
// the quick form weights took the words' place on MMLU-style traffic and
// lost 0.01-0.03 APGR (docs/ROUTER.md).
void OnlineLearner::step(const Kept& k) {
  const double words = words_logit(work_, k.base_logit, k.hashed);
  const double g = sigmoid(words) - k.gain;
  const double lr = options_.learning_rate;
  accum_bias_ += g * g;
  work_.bias -= lr * g / std::sqrt(accum_bias_ + 1e-8);
  const double gs = g * k.base_logit;
  accum_scale_ += gs * gs;
  work_.base_scale -= lr * gs / std::sqrt(accum_scale_ + 1e-8);
  if (work_.neighbours && work_.neighbours->topics > 0) {
    const double gt = g * topic_logit(*work_.neighbours, k.hashed);
    accum_topic_ += gt * gt;
    work_.topic_weight -= lr * gt / std::sqrt(accum_topic_ + 1e-8);
  }
  for (const auto& [bucket, value] : k.hashed) {
    float& w = work_.weights[bucket];
    const double gw = g * value + options_.l2 * w;
    accum_[bucket] += static_cast<float>(gw * gw);
    w -= static_cast<float>(lr * gw / std::sqrt(accum_[bucket] + 1e-8));
  }
  if (!options_.form_features) return;
  const double gf = sigmoid(words + form_logit(work_, form_fitted_, k.form)) - k.gain;
  for (DenseFeature d : kFormFeatures) {
    const int i = static_cast<int>(d);
    const double x = standardized(work_, k.form, i);
    double& w = form_fitted_[i];
    const double gw = gf * x + options_.form_l2 * w;
    accum_form_[i] += gw * gw;
    w -= options_.form_learning_rate * gw / std::sqrt(accum_form_[i] + 1e-8);
  }
  ++form_steps_;
  const double share = std::max(1.0 / static_cast<double>(form_steps_), 1.0 / kFormAverageLabels);
  for (int i = 0; i < kDenseFeatureCount; ++i)
    work_.form_weights[i] += share * (form_fitted_[i] - work_.form_weights[i]);
}

void OnlineLearner::refit() {
  std::vector<size_t> order(kept_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  for (int e = 0; e < options_.refit_epochs; ++e) {
    std::shuffle(order.begin(), order.end(), rng_);
    for (size_t i : order) step(kept_[i]);
  }
}

void OnlineLearner::recalibrate() {
  if (options_.target_cloud_share < 0.0 || traffic_.empty()) return;
  std::vector<double> scores;
  scores.reserve(traffic_.size());
  for (const auto& f : traffic_) {
    scores.push_back(
        sigmoid(combined(work_, f.hashed, residual(work_, base_logit(f), form_of(f), f.hashed))));
  }
  work_.threshold = calibrate_threshold(std::move(scores), options_.target_cloud_share);
}

void OnlineLearner::publish() {
  snapshot_.store(std::make_shared<const LearnerSnapshot>(work_));
}

void OnlineLearner::apply(const LearnerLabel& label) {
  std::lock_guard lock(state_mutex_);
  Kept k{label.features.hashed, form_of(label.features), base_logit(label.features),
         std::clamp(label.gain, 0.0, 1.0)};
  // Scored before it is learned from: the estimate stays out-of-sample.
  const double z = residual(work_, k);
  if (label.edge_quality && label.cloud_quality) {
    estimates_.push_back(
        {sigmoid(combined(work_, k.hashed, z)), *label.edge_quality, *label.cloud_quality});
    if (estimates_.size() > options_.estimate_window) estimates_.pop_front();
  }
  fit_blend(k, z);
  step(k);
  kept_.push_back(std::move(k));
  if (kept_.size() > options_.max_kept_labels) kept_.pop_front();
  ++labels_[static_cast<int>(label.source)];
  ++work_.version;
  if (options_.refit_every > 0 && work_.version % options_.refit_every == 0) refit();
  if (work_.version % kReindexEvery == 0 || work_.version < kReindexEvery) {
    rebuild_neighbours();
    restandardize_form();
  }
  if (work_.version % kRecalibrateEvery == 0) recalibrate();
  publish();
}

void OnlineLearner::observe_now(const ComplexityFeatures& features) {
  std::lock_guard lock(state_mutex_);
  traffic_.push_back(features);
  if (traffic_.size() > options_.traffic_window) traffic_.pop_front();
}

bool OnlineLearner::submit(LearnerLabel label) {
  {
    std::lock_guard lock(queue_mutex_);
    if (queue_.size() >= options_.max_queue) {
      dropped_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    queue_.push_back(std::move(label));
  }
  queue_cv_.notify_one();
  return true;
}

void OnlineLearner::observe(ComplexityFeatures features) {
  // try_lock: a decision never waits for the learner.
  std::unique_lock lock(queue_mutex_, std::try_to_lock);
  if (!lock.owns_lock() || traffic_queue_.size() >= options_.traffic_window) return;
  traffic_queue_.push_back(std::move(features));
}

void OnlineLearner::start() {
  std::lock_guard lock(queue_mutex_);
  if (thread_.joinable()) return;
  stopping_ = false;
  thread_ = std::thread([this] { run(); });
}

void OnlineLearner::stop() {
  {
    std::lock_guard lock(queue_mutex_);
    if (!thread_.joinable()) return;
    stopping_ = true;
  }
  queue_cv_.notify_all();
  thread_.join();
}

void OnlineLearner::flush() {
  std::unique_lock lock(queue_mutex_);
  if (!thread_.joinable()) return;
  idle_cv_.wait(lock, [this] { return queue_.empty() && traffic_queue_.empty() && !busy_; });
}

void OnlineLearner::run() {
  std::unique_lock lock(queue_mutex_);
  for (;;) {
    queue_cv_.wait(lock,
                   [this] { return stopping_ || !queue_.empty() || !traffic_queue_.empty(); });
    if (queue_.empty() && traffic_queue_.empty()) {
      if (stopping_) return;
      continue;
    }
    std::deque<LearnerLabel> labels;
    std::deque<ComplexityFeatures> traffic;
    labels.swap(queue_);
    traffic.swap(traffic_queue_);
    busy_ = true;
    lock.unlock();
    for (const auto& f : traffic) observe_now(f);
    for (const auto& l : labels) apply(l);
    lock.lock();
    busy_ = false;
    idle_cv_.notify_all();
  }
}

LearnerStats OnlineLearner::stats() const {
  std::lock_guard lock(state_mutex_);
  LearnerStats s;
  s.labels = labels_;
  s.dropped = dropped_.load(std::memory_order_relaxed);
  s.version = work_.version;
  s.threshold = work_.threshold;
  s.blend = work_.blend;
  s.kept_labels = static_cast<int64_t>(kept_.size());
  if (options_.form_features) {
    for (DenseFeature d : kFormFeatures) {
      const int i = static_cast<int>(d);
      s.form_weights.emplace_back(std::string(dense_feature_name(i)), work_.form_weights[i]);
    }
    std::stable_sort(
        s.form_weights.begin(), s.form_weights.end(),
        [](const auto& a, const auto& b) { return std::abs(a.second) > std::abs(b.second); });
  }
  s.estimate_rows = static_cast<int64_t>(estimates_.size());
  if (estimates_.size() >= kMinEstimateRows) {
    std::vector<double> scores;
    std::vector<TierQuality> rows;
    for (const auto& e : estimates_) {
      scores.push_back(e.score);
      rows.push_back({e.edge, e.cloud});
    }
    if (auto m = evaluate_routing(scores, rows); m.ok()) s.estimated_apgr = m->apgr;
  }
  return s;
}

nlohmann::ordered_json form_weights_json(const LearnerStats& stats) {
  json out = json::object();
  for (const auto& [name, weight] : stats.form_weights) out[name] = weight;
  return out;
}

// ---- persistence -------------------------------------------------------------------

std::string OnlineLearner::to_json() const {
  std::lock_guard lock(state_mutex_);
  json index = json::array(), weight = json::array(), accum = json::array();
  for (size_t i = 0; i < work_.weights.size(); ++i) {
    if (work_.weights[i] != 0.0f || accum_[i] != 0.0f) {
      index.push_back(i);
      weight.push_back(work_.weights[i]);
      accum.push_back(accum_[i]);
    }
  }
  json labels = json::object();
  for (int i = 0; i < kLabelSourceCount; ++i) {
    labels[std::string(label_source_name(static_cast<LabelSource>(i)))] = labels_[i];
  }
  json kept = json::array();
  for (const auto& k : kept_) {
    json b = json::array(), v = json::array();
    for (const auto& [bucket, value] : k.hashed) {
      b.push_back(bucket);
      v.push_back(value);
    }
    kept.push_back({{"base_logit", k.base_logit},
                    {"gain", k.gain},
                    {"index", b},
                    {"value", v},
                    {"form", k.form}});
  }
  json est = json::array();
  for (const auto& e : estimates_) est.push_back({e.score, e.edge, e.cloud});
  json doc = {{"format", kFormat},
              {"file_version", kFileVersion},
              {"version", work_.version},
              {"hashing",
               {{"bits", base_->hashing().bits},
                {"seed", base_->hashing().seed},
                {"bigrams", base_->hashing().bigrams}}},
              {"threshold", work_.threshold},
              {"bias", work_.bias},
              {"base_scale", work_.base_scale},
              {"accum_bias", accum_bias_},
              {"accum_scale", accum_scale_},
              {"blend", work_.blend},
              {"accum_blend", accum_blend_},
              {"topic_weight", work_.topic_weight},
              {"accum_topic", accum_topic_},
              {"form_weights", work_.form_weights},
              {"form_fitted", form_fitted_},
              {"form_centre", work_.form_centre},
              {"form_spread", work_.form_spread},
              {"form_steps", form_steps_},
              {"accum_form", accum_form_},
              {"labels", labels},
              {"weights", {{"index", index}, {"weight", weight}, {"accum", accum}}},
              {"kept", kept},
              {"estimates", est}};
  return doc.dump();
}

Status OnlineLearner::parse(std::string_view text, std::string_view source) {
  const std::string where(source);
  auto bad = [&](const std::string& what) {
    return make_error(ErrorKind::kCorrupt,
                      where + ": " + what +
                          "; restore an earlier version (`foreshore router status --rollback`) "
                          "or delete the file to start learning afresh");
  };
  json doc = json::parse(text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) return bad("not a JSON object");
  if (doc.value("format", "") != kFormat) return bad("format is not " + std::string(kFormat));
  const int file_version = doc.value("file_version", 0);
  if (file_version < 1 || file_version > kFileVersion) {
    return bad("file_version is not 1 to " + std::to_string(kFileVersion) +
               " (a newer foreshore may have written it)");
  }
  try {
    const json& h = doc.at("hashing");
    if (h.at("bits").get<int>() != base_->hashing().bits ||
        h.at("seed").get<uint64_t>() != base_->hashing().seed ||
        h.at("bigrams").get<bool>() != base_->hashing().bigrams) {
      return make_error(ErrorKind::kInvalidArgument,
                        where +
                            ": learned over a complexity model with other word hashing than the "
                            "one loaded now; its weights would mean other words. Move it aside "
                            "to start learning afresh over this model");
    }
    LearnerSnapshot s;
    s.version = doc.at("version").get<uint64_t>();
    s.threshold = doc.at("threshold").get<double>();
    s.bias = doc.at("bias").get<double>();
    s.base_scale = doc.at("base_scale").get<double>();
    // Version 1 had no neighbour estimate: it starts at the residual alone.
    s.blend = file_version >= 2 ? doc.at("blend").get<double>() : 0.0;
    const double accum_blend = file_version >= 2 ? doc.at("accum_blend").get<double>() : 0.0;
    // Version 3 added the topic weight.
    s.topic_weight =
        file_version >= 3 ? doc.at("topic_weight").get<double>() : options_.initial_topic_weight;
    const double accum_topic = file_version >= 3 ? doc.at("accum_topic").get<double>() : 0.0;
    // Version 4's form weights were fitted on the base model's scale, not
    // against the kept labels: they start again at 0 (its kept labels' form
    // values still count).
    DenseVector accum_form{}, form_fitted{};
    uint64_t form_steps = 0;
    if (file_version >= 5) {
      const json& fw = doc.at("form_weights");
      const json& ff = doc.at("form_fitted");
      const json& fa = doc.at("accum_form");
      const json& fc = doc.at("form_centre");
      const json& fs = doc.at("form_spread");
      const auto n = static_cast<size_t>(kDenseFeatureCount);
      if (fw.size() != n || ff.size() != n || fa.size() != n || fc.size() != n || fs.size() != n) {
        return bad("form_weights, form_fitted, accum_form, form_centre and form_spread must hold " +
                   std::to_string(kDenseFeatureCount) + " numbers each (one per dense feature)");
      }
      for (int i = 0; i < kDenseFeatureCount; ++i) {
        s.form_weights[i] = fw[i].get<double>();
        form_fitted[i] = ff[i].get<double>();
        accum_form[i] = fa[i].get<double>();
        s.form_centre[i] = fc[i].get<double>();
        s.form_spread[i] = fs[i].get<double>();
        if (!std::isfinite(s.form_weights[i]) || !std::isfinite(form_fitted[i]) ||
            !(accum_form[i] >= 0.0) || !std::isfinite(accum_form[i]) ||
            !std::isfinite(s.form_centre[i]) || !(s.form_spread[i] >= kMinFormSpread) ||
            !std::isfinite(s.form_spread[i])) {
          return bad(
              "form_weights, form_fitted, accum_form, form_centre or form_spread hold a "
              "non-finite or out-of-range number");
        }
      }
      form_steps = doc.at("form_steps").get<uint64_t>();
    }
    const size_t buckets = size_t{1} << base_->hashing().bits;
    s.weights.assign(buckets, 0.0f);
    std::vector<float> accum(buckets, 0.0f);
    const json& w = doc.at("weights");
    const auto& index = w.at("index");
    const auto& weight = w.at("weight");
    const auto& acc = w.at("accum");
    if (index.size() != weight.size() || index.size() != acc.size()) {
      return bad("weights.index, weights.weight and weights.accum differ in length");
    }
    for (size_t i = 0; i < index.size(); ++i) {
      const auto b = index[i].get<uint64_t>();
      if (b >= buckets) return bad("weights.index " + std::to_string(b) + " is out of range");
      s.weights[b] = weight[i].get<float>();
      accum[b] = acc[i].get<float>();
      if (!std::isfinite(s.weights[b]) || !std::isfinite(accum[b])) {
        return bad("weights hold a non-finite number");
      }
    }
    if (!std::isfinite(s.bias) || !std::isfinite(s.base_scale) || !(s.threshold >= 0.0) ||
        !(s.threshold <= 1.0) || !(s.blend >= 0.0) || !(s.blend <= 1.0) || !(accum_blend >= 0.0) ||
        !std::isfinite(accum_blend) || !std::isfinite(s.topic_weight) || !(accum_topic >= 0.0) ||
        !std::isfinite(accum_topic)) {
      return bad(
          "bias, base_scale, threshold, blend, accum_blend, topic_weight or accum_topic is not a "
          "finite number in range");
    }
    std::deque<Kept> kept;
    for (const auto& k : doc.at("kept")) {
      Kept row;
      row.base_logit = k.at("base_logit").get<double>();
      row.gain = k.at("gain").get<double>();
      if (!(row.gain >= 0.0) || !(row.gain <= 1.0))
        return bad("a kept label's gain is not in [0, 1]");
      const auto& b = k.at("index");
      const auto& v = k.at("value");
      if (b.size() != v.size()) return bad("a kept label's index and value differ in length");
      for (size_t i = 0; i < b.size(); ++i) {
        const auto bucket = b[i].get<uint32_t>();
        if (bucket >= buckets) return bad("a kept label's bucket is out of range");
        row.hashed.emplace_back(bucket, v[i].get<float>());
      }
      if (file_version >= 4) {
        const auto& form = k.at("form");
        if (form.size() != static_cast<size_t>(kDenseFeatureCount))
          return bad("a kept label's form does not hold one number per dense feature");
        for (int i = 0; i < kDenseFeatureCount; ++i) {
          row.form[i] = form[i].get<double>();
          if (!(std::abs(row.form[i]) <= ComplexityModel::kStandardizedBound))
            return bad("a kept label's form holds a number outside the standardized range");
        }
      }
      kept.push_back(std::move(row));
    }
    std::deque<Estimate> estimates;
    for (const auto& e : doc.value("estimates", json::array())) {
      if (!e.is_array() || e.size() != 3)
        return bad("an estimates entry is not [score, edge, cloud]");
      estimates.push_back({e[0].get<double>(), e[1].get<double>(), e[2].get<double>()});
    }
    std::array<int64_t, kLabelSourceCount> labels{};
    for (int i = 0; i < kLabelSourceCount; ++i) {
      labels[i] = doc.at("labels").value(
          std::string(label_source_name(static_cast<LabelSource>(i))), int64_t{0});
    }
    std::lock_guard lock(state_mutex_);
    work_ = std::move(s);
    accum_ = std::move(accum);
    accum_bias_ = doc.at("accum_bias").get<double>();
    accum_scale_ = doc.at("accum_scale").get<double>();
    accum_blend_ = accum_blend;
    accum_topic_ = accum_topic;
    accum_form_ = accum_form;
    form_fitted_ = form_fitted;
    form_steps_ = form_steps;
    kept_ = std::move(kept);
    rebuild_neighbours();
    if (file_version < 5) restandardize_form();
    estimates_ = std::move(estimates);
    labels_ = labels;
    publish();
  } catch (const json::exception& e) {
    return bad(std::string("a field is missing or has the wrong type (") + e.what() + ")");
  }
  return Status::Ok();
}

Status OnlineLearner::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return make_error(ErrorKind::kNotFound,
                      "cannot read router learner state '" + path + "'; check the path");
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return parse(ss.str(), path);
}

namespace {

std::string version_path(const std::string& path, uint64_t version) {
  return path + ".v" + std::to_string(version);
}

uint64_t file_version_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  json doc = json::parse(ss.str(), nullptr, false);
  if (!doc.is_object() || !doc.contains("version") || !doc["version"].is_number_unsigned()) {
    return 0;
  }
  return doc["version"].get<uint64_t>();
}

}  // namespace

std::vector<uint64_t> saved_learner_versions(const std::string& path) {
  namespace fs = std::filesystem;
  std::vector<uint64_t> versions;
  const fs::path p(path);
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  const std::string prefix = p.filename().string() + ".v";
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string digits = name.substr(prefix.size());
    if (digits.find_first_not_of("0123456789") != std::string::npos) continue;
    versions.push_back(std::stoull(digits));
  }
  std::sort(versions.begin(), versions.end(), std::greater<>());
  return versions;
}

Status OnlineLearner::save(const std::string& path, int keep) const {
  namespace fs = std::filesystem;
  const std::string text = to_json();
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) {
      return make_error(ErrorKind::kIo, "cannot write router learner state '" + tmp +
                                            "'; check that its folder exists and is writable");
    }
  }
  std::error_code ec;
  if (fs::exists(path, ec)) {
    fs::rename(path, version_path(path, file_version_of(path)), ec);
    if (ec) {
      return make_error(ErrorKind::kIo, "cannot keep the previous learner state '" + path +
                                            "' for rollback: " + ec.message());
    }
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    return make_error(ErrorKind::kIo,
                      "cannot replace router learner state '" + path + "': " + ec.message());
  }
  const auto versions = saved_learner_versions(path);
  for (size_t i = static_cast<size_t>(std::max(keep, 0)); i < versions.size(); ++i) {
    fs::remove(version_path(path, versions[i]), ec);
  }
  return Status::Ok();
}

Status rollback_learner_state(const std::string& path, uint64_t version) {
  namespace fs = std::filesystem;
  const std::string from = version_path(path, version);
  std::error_code ec;
  if (!fs::exists(from, ec)) {
    std::string have;
    for (uint64_t v : saved_learner_versions(path))
      have += (have.empty() ? "" : ", ") + std::to_string(v);
    return make_error(ErrorKind::kNotFound, "no saved learner state " + from + "; versions kept: " +
                                                (have.empty() ? "none" : have));
  }
  // The state replaced is kept too, so that a rollback can be undone.
  if (fs::exists(path, ec)) {
    const std::string current = version_path(path, file_version_of(path));
    if (!fs::exists(current, ec)) fs::copy_file(path, current, ec);
    if (ec) {
      return make_error(ErrorKind::kIo, "cannot keep the current learner state " + path + " as " +
                                            current + " before the rollback: " + ec.message());
    }
  }
  fs::copy_file(from, path, fs::copy_options::overwrite_existing, ec);
  if (ec) {
    return make_error(ErrorKind::kIo,
                      "cannot restore " + from + " over " + path + ": " + ec.message());
  }
  return Status::Ok();
}

}  // namespace foreshore::route
