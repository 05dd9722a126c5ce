// The gateway's side of online router learning: which decisions can still
// receive a label, how each kind of label (client feedback, cascade outcome,
// shadow verdict) becomes a training target, and what /metrics and
// /v1/router/status show. The learner itself is route/online_learner.h.
//
// Everything here stays on the device: a decision is remembered as its hashed
// word features only (never its text), and no label of any data class is sent
// anywhere. Device-only and prefer-local requests are never shadowed (the
// sampler's rule); their feedback is learned from locally like any other.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>

#include "common/result.h"
#include "observe/metrics.h"
#include "route/online_learner.h"
#include "route/router.h"

namespace foreshore::hybrid {

// What POST /v1/feedback answers.
struct FeedbackResult {
  bool learned = false;
  std::string reason;  // why not learned, when not
};

class RouterLearning {
 public:
  // Starts the learner over `router`'s complexity model and attaches it, so
  // decisions score with it from now on. Loads the state file when present.
  static Result<std::unique_ptr<RouterLearning>> create(const route::LearningConfig& config,
                                                        route::Router& router,
                                                        observe::MetricsRegistry& metrics);
  ~RouterLearning();

  // A served request: kept for feedback by its decision id; a cascade's
  // outcome (escalated or not) is a label at once.
  void record(const route::Decision& decision, std::string_view prompt, bool served_on_device,
              bool cascade_ran, bool escalated);
  // A shadow run's verdict on an edge answer (the cloud answered the same
  // request): agreement says the edge was adequate.
  void shadow_verdict(const std::string& decision_id, bool agreed);
  // Client feedback: `score` in [0, 1] (thumbs up 1, down 0). Error when the
  // decision id is unknown (never made here, or forgotten: the newest
  // `kMaxPending` are kept: kNotFound) or already has a verdict
  // (kInvalidArgument).
  Result<FeedbackResult> feedback(const std::string& decision_id, double score);

  void collect_metrics();
  nlohmann::ordered_json status() const;
  // Writes the state file now, when something was learned since the last
  // save (also done every save_every_labels labels and at shutdown).
  Status save();

  // Decisions score with this learner from now on: a reloaded config's new
  // router, when the learning settings did not change, goes on learning
  // with the same learner and the decisions awaiting feedback.
  void attach(route::Router& router);
  // Saves now and never again (a reloaded config with other learning
  // settings starts its own learner from the file this writes).
  Status retire();
  const route::LearningConfig& config() const { return config_; }

  static constexpr size_t kMaxPending = 20000;

 private:
  struct Pending {
    route::ComplexityFeatures features;
    bool served_on_device = false;
    bool feedback_given = false;
  };
  RouterLearning() = default;
  void submit(route::LearnerLabel label);

  route::LearningConfig config_;
  std::shared_ptr<route::OnlineLearner> learner_;
  observe::MetricsRegistry* metrics_ = nullptr;
  mutable std::mutex mu_;
  std::unordered_map<std::string, Pending> pending_;
  std::deque<std::string> pending_order_;
  int64_t submitted_ = 0;
  std::mutex save_mu_;           // one save at a time (saver thread, retire, shutdown)
  uint64_t saved_version_ = 0;   // the learner's version the state file holds
  int64_t feedback_unused_ = 0;  // on cloud answers: says nothing about the edge
  // Saving runs on its own thread, so a label never waits for the disk.
  std::condition_variable save_cv_;
  bool save_due_ = false;
  bool stopping_ = false;
  std::thread saver_;
};

}  // namespace foreshore::hybrid
