// Shadow evaluation: re-run a sample of edge-served requests on the cloud
// tier, after the client has its answer, and score how often the two agree
// per (edge model version, cloud model version). It is how a silent quality
// drop on either side shows up without a labelled test set.
//
// Guarantees: a device-only job is refused before anything else looks at it;
// maybe_submit() never waits for the cloud (a full queue drops the job); cloud
// traffic is bounded by the sampled fraction and a token-bucket rate.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "common/result.h"
#include "route/sensitivity.h"

namespace foreshore::exec {

struct ShadowJob {
  std::string request_id;
  // Defaults to the strictest class so a job whose class was never set is refused.
  route::DataClass data_class = route::DataClass::kDeviceOnly;
  std::vector<backend::ChatMessage> messages;
  std::optional<std::string> prompt;  // legacy completions
  backend::GenerationParams params;
  std::string edge_answer;
  std::string edge_model_version;
  // Set by the sampler when it stops; the runner should hand it to the backend
  // (BackendRequest::cancelled) so shutdown does not wait for the cloud.
  std::shared_ptr<std::atomic<bool>> cancelled;
};

struct ShadowAnswer {
  std::string text;
  std::string model_version;  // as the cloud tier reported it; empty = "unknown"
};

// Runs the job's request on the cloud tier. Called on the sampler's thread.
using ShadowRunner = std::function<Result<ShadowAnswer>(const ShadowJob&)>;

// A small controller for a threshold where lower means more conservative
// (more traffic to the cloud): each evaluation moves it one step down while
// agreement is below target, and one step back up once agreement is above
// target + deadband, always within [min, max].
struct AdaptiveThresholdOptions {
  double target_agreement = 0.9;
  double deadband = 0.05;
  double initial = 0.5;
  double min = 0.1;
  double max = 0.9;
  double step = 0.05;
  uint64_t window = 50;  // completed shadow jobs per evaluation
};

class ThresholdController {
 public:
  explicit ThresholdController(const AdaptiveThresholdOptions& options);
  // Feeds one measured agreement rate; returns the threshold to use now.
  double update(double agreement_rate);
  double threshold() const { return threshold_; }

 private:
  AdaptiveThresholdOptions options_;
  double threshold_;
};

struct ShadowOptions {
  double fraction = 0.0;         // of eligible jobs, 0..1
  double rate_per_second = 1.0;  // jobs admitted per second; 0 = no limit
  double burst = 0.0;            // token-bucket size; 0 = max(1, rate_per_second)
  size_t queue_capacity = 64;
  // Answers agree when their normalized texts are equal or the word-set
  // Jaccard similarity reaches this.
  double agreement_threshold = 0.6;
  // Classes whose requests may be re-run on the cloud. Public only by
  // default: prefer-local data stays on the device once the edge has
  // answered it, and device-only data is refused whatever this lists.
  std::vector<route::DataClass> data_classes{route::DataClass::kPublic};
  uint64_t seed = 0;  // sampling seed; 0 = from std::random_device
  std::optional<AdaptiveThresholdOptions> adaptive{};
  // Called on the sampler's thread after each adaptive evaluation.
  std::function<void(double agreement_rate, double threshold)> on_threshold{};
  // Called on the sampler's thread with each scored job's request id and
  // verdict: the router learns from it (hybrid/learning.h).
  std::function<void(const std::string& request_id, bool agreed)> on_verdict{};
  // Injected by tests for the rate limit; steady_clock::now otherwise.
  std::function<std::chrono::steady_clock::time_point()> now{};
};

struct ShadowCounters {
  uint64_t offered = 0;  // maybe_submit calls
  uint64_t refused_device_only = 0;
  uint64_t refused_data_class = 0;  // not in data_classes (device-only not included)
  uint64_t not_sampled = 0;
  uint64_t dropped = 0;  // queue full, or the sampler stopped
  uint64_t rate_limited = 0;
  uint64_t accepted = 0;
  uint64_t completed = 0;  // cloud answered and the pair was scored
  uint64_t failed = 0;     // cloud run failed
  uint64_t discarded = 0;  // accepted but still queued when the sampler stopped
  size_t queued = 0;
};

struct AgreementStats {
  std::string edge_model_version;
  std::string cloud_model_version;
  uint64_t jobs = 0;
  uint64_t agreed = 0;
  uint64_t exact = 0;
  double mean_similarity = 0.0;
  double agreement_rate() const {
    return jobs == 0 ? 0.0 : static_cast<double>(agreed) / static_cast<double>(jobs);
  }
};

struct AgreementScore {
  double similarity = 0.0;  // word-set Jaccard, 1 for two empty answers
  bool exact = false;       // equal after normalization
  bool agreed = false;
};

// Lower-cases ASCII, turns ASCII punctuation into spaces and collapses
// whitespace; non-ASCII bytes are kept as parts of words.
std::string normalize_answer(std::string_view text);
double word_jaccard(std::string_view a, std::string_view b);
AgreementScore score_agreement(std::string_view edge, std::string_view cloud, double threshold);

class ShadowSampler {
 public:
  static Status validate(const ShadowOptions& options);

  // Starts the worker thread.
  ShadowSampler(ShadowOptions options, ShadowRunner runner);
  ~ShadowSampler();  // stop()
  ShadowSampler(const ShadowSampler&) = delete;
  ShadowSampler& operator=(const ShadowSampler&) = delete;

  // Returns true when the job was queued for a cloud run. Never waits on the
  // worker; takes a short lock only.
  bool maybe_submit(ShadowJob job);
  // Discards queued jobs, cancels the one running and waits for it to return.
  void stop();
  // Until nothing is queued or running; false on timeout. For tests and drain.
  bool wait_idle(std::chrono::milliseconds timeout);

  ShadowCounters counters() const;
  std::vector<AgreementStats> agreement() const;  // by (edge, cloud) version
  // Starts this sampler's counts and agreement from `previous`'s (the one a
  // config reload replaces), so that /metrics goes on from where it was.
  void carry_over(const ShadowSampler& previous);
  std::optional<double> adaptive_threshold() const;

 private:
  void run();
  std::chrono::steady_clock::time_point now() const;

  const ShadowOptions options_;
  const ShadowRunner runner_;

  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::condition_variable idle_;
  std::deque<ShadowJob> queue_;
  bool running_job_ = false;
  bool stopping_ = false;
  std::shared_ptr<std::atomic<bool>> current_cancel_;
  std::mt19937_64 rng_;
  double tokens_ = 0.0;
  std::chrono::steady_clock::time_point last_refill_;
  ShadowCounters counters_;
  struct PairStats {
    uint64_t jobs = 0, agreed = 0, exact = 0;
    double similarity_sum = 0.0;
  };
  std::map<std::pair<std::string, std::string>, PairStats> pairs_;
  std::optional<ThresholdController> controller_;
  uint64_t window_jobs_ = 0, window_agreed_ = 0;
  std::thread worker_;
};

}  // namespace foreshore::exec
