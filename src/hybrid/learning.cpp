#include "hybrid/learning.h"

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

namespace foreshore::hybrid {

Result<std::unique_ptr<RouterLearning>> RouterLearning::create(const route::LearningConfig& config,
                                                               route::Router& router,
                                                               observe::MetricsRegistry& metrics) {
  const route::ComplexityModel* model = router.complexity();
  if (model == nullptr) {
    return make_error(ErrorKind::kInvalidArgument,
                      "routing.learning needs a complexity model to learn over; remove "
                      "routing.complexity_model: none, or turn routing.learning off");
  }
  std::unique_ptr<RouterLearning> l(new RouterLearning());
  l->config_ = config;
  // Saved to only once loaded: a file this start cannot read (a newer
  // version's, a damaged one) must be left as it is, not replaced at exit by
  // an empty learner.
  l->config_.state.clear();
  l->metrics_ = &metrics;
  route::LearnerOptions o;
  o.target_cloud_share = config.target_cloud_share.value_or(-1.0);
  o.neighbours = config.neighbours;
  o.form_features = config.form_features;
  o.neighbour_k = config.neighbour_k;
  o.neighbour_gamma = config.neighbour_gamma;
  o.neighbour_prior = config.neighbour_prior;
  l->learner_ = std::make_shared<route::OnlineLearner>(
      std::make_shared<const route::ComplexityModel>(*model), o);
  std::error_code ec;
  if (!config.state.empty() && std::filesystem::exists(config.state, ec)) {
    if (!std::filesystem::is_regular_file(config.state, ec)) {
      return make_error(ErrorKind::kInvalidArgument,
                        "routing.learning.state: " + config.state +
                            " is not a regular file (a folder?); give the path of the state "
                            "file, which is created at the first save");
    }
    if (auto s = l->learner_->load(config.state); !s.ok()) return s.error();
    std::fprintf(stderr, "router learning: resumed from %s (%llu labels)\n", config.state.c_str(),
                 static_cast<unsigned long long>(l->learner_->stats().version));
  }
  l->config_.state = config.state;
  l->saved_version_ = l->learner_->stats().version;
  l->learner_->start();
  if (!config.state.empty()) {
    RouterLearning* self = l.get();
    l->saver_ = std::thread([self] {
      std::unique_lock lock(self->mu_);
      for (;;) {
        self->save_cv_.wait(lock, [self] { return self->save_due_ || self->stopping_; });
        if (self->stopping_) return;
        self->save_due_ = false;
        lock.unlock();
        if (auto s = self->save(); !s.ok()) {
          std::fprintf(stderr, "router learning: %s\n", s.error().message.c_str());
        }
        lock.lock();
      }
    });
  }
  l->attach(router);
  return l;
}

void RouterLearning::attach(route::Router& router) {
  router.set_learner(learner_);
}

RouterLearning::~RouterLearning() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  save_cv_.notify_all();
  if (saver_.joinable()) saver_.join();
  learner_->stop();  // applies what is queued, so the last save holds it
  if (auto s = save(); !s.ok()) {
    std::fprintf(stderr, "router learning: %s\n", s.error().message.c_str());
  }
}

void RouterLearning::submit(route::LearnerLabel label) {
  if (!learner_->submit(std::move(label))) return;
  bool due = false;
  {
    std::lock_guard lock(mu_);
    ++submitted_;
    due = config_.save_every_labels > 0 && submitted_ % config_.save_every_labels == 0;
    if (due) save_due_ = true;
  }
  if (due) save_cv_.notify_one();
}

void RouterLearning::record(const route::Decision& decision, std::string_view prompt,
                            bool served_on_device, bool cascade_ran, bool escalated) {
  Pending p;
  p.features = route::extract_complexity_features(prompt, learner_->base().hashing());
  p.served_on_device = served_on_device;
  if (cascade_ran) {
    // The edge's own confidence decided: a weaker label than a person's or a
    // shadow verdict, so it stops short of 0 and 1.
    route::LearnerLabel label;
    label.features = p.features;
    label.gain = escalated ? 0.8 : 0.2;
    label.source = route::LabelSource::kCascade;
    submit(std::move(label));
  }
  std::lock_guard lock(mu_);
  if (pending_.emplace(decision.id, std::move(p)).second) {
    pending_order_.push_back(decision.id);
    if (pending_order_.size() > kMaxPending) {
      pending_.erase(pending_order_.front());
      pending_order_.pop_front();
    }
  }
}

void RouterLearning::shadow_verdict(const std::string& decision_id, bool agreed) {
  route::LearnerLabel label;
  {
    std::lock_guard lock(mu_);
    auto it = pending_.find(decision_id);
    if (it == pending_.end()) return;
    label.features = it->second.features;
  }
  // The cloud's answer is the reference: agreeing, the edge was adequate and
  // escalating would have gained nothing.
  label.gain = agreed ? 0.0 : 1.0;
  label.source = route::LabelSource::kShadow;
  label.edge_quality = agreed ? 1.0 : 0.0;
  label.cloud_quality = 1.0;
  submit(std::move(label));
}

Result<FeedbackResult> RouterLearning::feedback(const std::string& decision_id, double score) {
  route::LearnerLabel label;
  {
    std::lock_guard lock(mu_);
    auto it = pending_.find(decision_id);
    if (it == pending_.end()) {
      return make_error(ErrorKind::kNotFound,
                        "no decision '" + decision_id +
                            "' is waiting for feedback here: use the decision_id of an answer "
                            "from this gateway process (each replica knows its own; the newest " +
                            std::to_string(kMaxPending) + " are kept)");
    }
    // One verdict per answer: repeating one would weigh it as many labels.
    if (it->second.feedback_given) {
      return make_error(ErrorKind::kInvalidArgument,
                        "feedback on decision '" + decision_id +
                            "' was already given; one verdict per answer is learned from");
    }
    it->second.feedback_given = true;
    if (!it->second.served_on_device) {
      ++feedback_unused_;
      return FeedbackResult{false,
                            "the cloud answered this request, so feedback on it says nothing "
                            "about whether the edge would have done"};
    }
    label.features = it->second.features;
  }
  label.gain = 1.0 - score;  // a poor edge answer: the cloud would have helped
  label.source = route::LabelSource::kFeedback;
  label.edge_quality = score;
  submit(std::move(label));
  return FeedbackResult{true, {}};
}

void RouterLearning::collect_metrics() {
  const route::LearnerStats s = learner_->stats();
  for (int i = 0; i < route::kLabelSourceCount; ++i) {
    const std::string source(route::label_source_name(static_cast<route::LabelSource>(i)));
    metrics_
        ->gauge("foreshore_router_labels", "Labels the router has learned from, per source.",
                {"source"}, {source})
        .set(static_cast<double>(s.labels[i]));
  }
  metrics_
      ->gauge("foreshore_router_learned_threshold",
              "The learning router's complexity threshold (recalibrated to the target share).", {},
              {})
      .set(s.threshold);
  metrics_
      ->gauge("foreshore_router_labels_dropped",
              "Labels dropped because the learner's queue was full.", {}, {})
      .set(static_cast<double>(s.dropped));
  metrics_
      ->gauge("foreshore_router_neighbour_blend",
              "Share of the neighbour estimate in the learning router's score (0: the residual "
              "alone), fitted online.",
              {}, {})
      .set(s.blend);
  metrics_
      ->gauge("foreshore_router_kept_labels",
              "Labels the learning router keeps for its neighbour estimate.", {}, {})
      .set(static_cast<double>(s.kept_labels));
  if (s.estimated_apgr) {
    metrics_
        ->gauge("foreshore_router_estimated_apgr",
                "The learning router's APGR on recent shadow labels, each scored before it was "
                "learned from.",
                {}, {})
        .set(*s.estimated_apgr);
  }
}

nlohmann::ordered_json RouterLearning::status() const {
  const route::LearnerStats s = learner_->stats();
  nlohmann::ordered_json labels = nlohmann::ordered_json::object();
  for (int i = 0; i < route::kLabelSourceCount; ++i) {
    labels[std::string(route::label_source_name(static_cast<route::LabelSource>(i)))] = s.labels[i];
  }
  std::lock_guard lock(mu_);
  return {{"learning", true},
          {"state", config_.state},
          {"version", s.version},
          {"labels", labels},
          {"labels_dropped", s.dropped},
          {"feedback_on_cloud_answers", feedback_unused_},
          {"threshold", s.threshold},
          {"neighbours", config_.neighbours},
          {"form_features", config_.form_features},
          {"neighbour_blend", s.blend},
          {"form_weights", route::form_weights_json(s)},
          {"kept_labels", s.kept_labels},
          {"estimated_apgr", s.estimated_apgr ? nlohmann::ordered_json(*s.estimated_apgr)
                                              : nlohmann::ordered_json(nullptr)},
          {"estimate_labels", s.estimate_rows},
          {"decisions_awaiting_feedback", pending_.size()}};
}

Status RouterLearning::save() {
  std::string path;
  {
    std::lock_guard lock(mu_);
    path = config_.state;
  }
  if (path.empty()) return Status::Ok();
  // Nothing learned since the last save: writing again would only push an
  // older kept version out for a copy of this one.
  const uint64_t version = learner_->stats().version;
  {
    std::lock_guard lock(save_mu_);
    if (version == saved_version_ && std::filesystem::exists(path)) return Status::Ok();
    if (auto s = learner_->save(path); !s.ok()) return s;
    saved_version_ = version;
  }
  return Status::Ok();
}

Status RouterLearning::retire() {
  Status s = save();
  std::lock_guard lock(mu_);
  config_.state.clear();
  return s;
}

}  // namespace foreshore::hybrid
