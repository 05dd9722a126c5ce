#include "exec/shadow.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <set>

namespace foreshore::exec {
namespace {

std::set<std::string_view> word_set(std::string_view normalized) {
  std::set<std::string_view> words;
  size_t pos = 0;
  while (pos < normalized.size()) {
    size_t end = normalized.find(' ', pos);
    if (end == std::string_view::npos) end = normalized.size();
    if (end > pos) words.insert(normalized.substr(pos, end - pos));
    pos = end + 1;
  }
  return words;
}

double jaccard_of_normalized(std::string_view a, std::string_view b) {
  const auto wa = word_set(a);
  const auto wb = word_set(b);
  if (wa.empty() && wb.empty()) return 1.0;
  size_t common = 0;
  for (const auto& w : wa) common += wb.count(w);
  const size_t all = wa.size() + wb.size() - common;
  return static_cast<double>(common) / static_cast<double>(all);
}

bool valid_fraction(double v) {
  return v >= 0.0 && v <= 1.0;
}

}  // namespace

std::string normalize_answer(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool pending_space = false;
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    const bool word_char =
        c >= 0x80 || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (!word_char) {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) out.push_back(' ');
    pending_space = false;
    out.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : ch);
  }
  return out;
}

double word_jaccard(std::string_view a, std::string_view b) {
  return jaccard_of_normalized(normalize_answer(a), normalize_answer(b));
}

AgreementScore score_agreement(std::string_view edge, std::string_view cloud, double threshold) {
  const std::string ne = normalize_answer(edge);
  const std::string nc = normalize_answer(cloud);
  AgreementScore score;
  score.exact = ne == nc;
  score.similarity = score.exact ? 1.0 : jaccard_of_normalized(ne, nc);
  score.agreed = score.exact || score.similarity >= threshold;
  return score;
}

ThresholdController::ThresholdController(const AdaptiveThresholdOptions& options)
    : options_(options), threshold_(std::clamp(options.initial, options.min, options.max)) {}

double ThresholdController::update(double agreement_rate) {
  if (agreement_rate < options_.target_agreement) {
    threshold_ = std::max(options_.min, threshold_ - options_.step);
  } else if (agreement_rate >= options_.target_agreement + options_.deadband) {
    threshold_ = std::min(options_.max, threshold_ + options_.step);
  }
  return threshold_;
}

Status ShadowSampler::validate(const ShadowOptions& o) {
  const auto bad = [](const std::string& what) {
    return Status(make_error(ErrorKind::kInvalidArgument, "shadow sampling: " + what));
  };
  if (!valid_fraction(o.fraction)) return bad("fraction must be between 0 and 1");
  if (!(o.rate_per_second >= 0.0) || !(o.burst >= 0.0) || !std::isfinite(o.rate_per_second) ||
      !std::isfinite(o.burst)) {
    return bad("rate_per_second and burst must be finite and >= 0 (0 = no limit / default)");
  }
  if (o.queue_capacity == 0) return bad("queue_capacity must be at least 1");
  if (!valid_fraction(o.agreement_threshold)) {
    return bad("agreement_threshold must be between 0 and 1");
  }
  if (o.adaptive) {
    const AdaptiveThresholdOptions& a = *o.adaptive;
    if (!valid_fraction(a.target_agreement) || a.deadband < 0 || a.step <= 0 || a.min > a.max ||
        a.window == 0) {
      return bad(
          "adaptive: target_agreement must be in [0, 1], deadband >= 0, step > 0, min <= max "
          "and window >= 1");
    }
  }
  return Status::Ok();
}

ShadowSampler::ShadowSampler(ShadowOptions options, ShadowRunner runner)
    : options_(std::move(options)), runner_(std::move(runner)) {
  rng_.seed(options_.seed != 0 ? options_.seed : std::random_device{}());
  tokens_ = options_.burst > 0 ? options_.burst : std::max(1.0, options_.rate_per_second);
  last_refill_ = now();
  if (options_.adaptive) controller_.emplace(*options_.adaptive);
  worker_ = std::thread([this] { run(); });
}

ShadowSampler::~ShadowSampler() {
  stop();
}

std::chrono::steady_clock::time_point ShadowSampler::now() const {
  return options_.now ? options_.now() : std::chrono::steady_clock::now();
}

bool ShadowSampler::maybe_submit(ShadowJob job) {
  // Refused before sampling and before any option is consulted, so that no
  // configuration can let a device-only job through.
  if (job.data_class == route::DataClass::kDeviceOnly) {
    std::lock_guard lock(mu_);
    ++counters_.offered;
    ++counters_.refused_device_only;
    return false;
  }
  const auto t = now();
  {
    std::lock_guard lock(mu_);
    ++counters_.offered;
    if (std::find(options_.data_classes.begin(), options_.data_classes.end(), job.data_class) ==
        options_.data_classes.end()) {
      ++counters_.refused_data_class;
      return false;
    }
    // 53 random bits as a double in [0, 1): the same sequence on every platform.
    const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53;
    if (!(u < options_.fraction)) {
      ++counters_.not_sampled;
      return false;
    }
    if (stopping_ || queue_.size() >= options_.queue_capacity) {
      ++counters_.dropped;
      return false;
    }
    if (options_.rate_per_second > 0) {
      const double capacity =
          options_.burst > 0 ? options_.burst : std::max(1.0, options_.rate_per_second);
      const double elapsed = std::chrono::duration<double>(t - last_refill_).count();
      if (elapsed > 0) {
        tokens_ = std::min(capacity, tokens_ + elapsed * options_.rate_per_second);
        last_refill_ = t;
      }
      if (tokens_ < 1.0) {
        ++counters_.rate_limited;
        return false;
      }
      tokens_ -= 1.0;
    }
    if (!job.cancelled) job.cancelled = std::make_shared<std::atomic<bool>>(false);
    queue_.push_back(std::move(job));
    ++counters_.accepted;
  }
  wake_.notify_one();
  return true;
}

void ShadowSampler::run() {
  std::unique_lock lock(mu_);
  for (;;) {
    wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
    if (stopping_) break;
    ShadowJob job = std::move(queue_.front());
    queue_.pop_front();
    running_job_ = true;
    current_cancel_ = job.cancelled;
    lock.unlock();

    std::optional<Result<ShadowAnswer>> answer;
    try {
      answer.emplace(runner_(job));
    } catch (const std::exception& e) {
      answer.emplace(
          make_error(ErrorKind::kInternal, std::string("shadow runner threw: ") + e.what()));
    }
    std::optional<AgreementScore> score;
    if (answer->ok()) {
      score = score_agreement(job.edge_answer, answer->value().text, options_.agreement_threshold);
    }

    std::function<void(double, double)> callback;
    double rate = 0.0, threshold = 0.0;
    lock.lock();
    running_job_ = false;
    current_cancel_.reset();
    if (score) {
      ++counters_.completed;
      const std::string cloud_version =
          answer->value().model_version.empty() ? "unknown" : answer->value().model_version;
      const std::string edge_version =
          job.edge_model_version.empty() ? "unknown" : job.edge_model_version;
      PairStats& pair = pairs_[{edge_version, cloud_version}];
      ++pair.jobs;
      pair.agreed += score->agreed;
      pair.exact += score->exact;
      pair.similarity_sum += score->similarity;
      if (controller_) {
        ++window_jobs_;
        window_agreed_ += score->agreed;
        if (window_jobs_ >= options_.adaptive->window) {
          rate = static_cast<double>(window_agreed_) / static_cast<double>(window_jobs_);
          threshold = controller_->update(rate);
          window_jobs_ = window_agreed_ = 0;
          callback = options_.on_threshold;
        }
      }
    } else {
      ++counters_.failed;
    }
    if (callback) {
      lock.unlock();
      callback(rate, threshold);
      lock.lock();
    }
    if (score && options_.on_verdict) {
      lock.unlock();
      options_.on_verdict(job.request_id, score->agreed);
      lock.lock();
    }
    if (queue_.empty()) idle_.notify_all();
  }
  idle_.notify_all();
}

void ShadowSampler::stop() {
  {
    std::lock_guard lock(mu_);
    if (stopping_ && !worker_.joinable()) return;
    stopping_ = true;
    counters_.discarded += queue_.size();
    queue_.clear();
    if (current_cancel_) current_cancel_->store(true);
  }
  wake_.notify_all();
  if (worker_.joinable()) worker_.join();
}

bool ShadowSampler::wait_idle(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  return idle_.wait_for(lock, timeout, [this] { return queue_.empty() && !running_job_; });
}

ShadowCounters ShadowSampler::counters() const {
  std::lock_guard lock(mu_);
  ShadowCounters out = counters_;
  out.queued = queue_.size();
  return out;
}

std::vector<AgreementStats> ShadowSampler::agreement() const {
  std::lock_guard lock(mu_);
  std::vector<AgreementStats> out;
  out.reserve(pairs_.size());
  for (const auto& [key, p] : pairs_) {
    out.push_back(
        AgreementStats{key.first, key.second, p.jobs, p.agreed, p.exact,
                       p.jobs == 0 ? 0.0 : p.similarity_sum / static_cast<double>(p.jobs)});
  }
  return out;
}

void ShadowSampler::carry_over(const ShadowSampler& previous) {
  std::scoped_lock lock(mu_, previous.mu_);
  const ShadowCounters& p = previous.counters_;
  for (auto [mine, theirs] :
       {std::pair{&counters_.offered, p.offered},
        std::pair{&counters_.refused_device_only, p.refused_device_only},
        std::pair{&counters_.refused_data_class, p.refused_data_class},
        std::pair{&counters_.not_sampled, p.not_sampled}, std::pair{&counters_.dropped, p.dropped},
        std::pair{&counters_.rate_limited, p.rate_limited},
        std::pair{&counters_.accepted, p.accepted}, std::pair{&counters_.completed, p.completed},
        std::pair{&counters_.failed, p.failed}, std::pair{&counters_.discarded, p.discarded}}) {
    *mine += theirs;
  }
  for (const auto& [key, stats] : previous.pairs_) {
    PairStats& pair = pairs_[key];
    pair.jobs += stats.jobs;
    pair.agreed += stats.agreed;
    pair.exact += stats.exact;
    pair.similarity_sum += stats.similarity_sum;
  }
}

std::optional<double> ShadowSampler::adaptive_threshold() const {
  std::lock_guard lock(mu_);
  if (!controller_) return std::nullopt;
  return controller_->threshold();
}

}  // namespace foreshore::exec
