#include "serve/stream.h"

#include <tuple>

namespace foreshore::serve {

using openai::SseWriter;

openai::Provenance StreamState::provenance(std::string_view version) const {
  openai::Provenance p;
  p.tier = tier;
  p.placement = placement;
  p.model = model;
  p.model_version = version;
  p.decision_id = decision_id;
  p.plan = plan;
  if (outcome) {
    p.degraded = outcome->degraded;
    p.degraded_reason = outcome->degraded_reason;
    p.escalated = outcome->escalated;
    p.confidence = outcome->confidence;
  }
  return p;
}

void StreamState::on_source(const std::string& source) {
  std::lock_guard lock(mu);
  if (started || source == tier) return;
  tier = source;
  placement = placement_of(source);
  std::tie(model, model_version) = model_of(source);
  writer.emplace(api, decision_id, created, model);
}

bool StreamState::end(const openai::ApiError& why) {
  {
    std::lock_guard lock(mu);
    if (!started || finished) return false;
    stream_error = why;
    SseWriter::error(pending, why);
    finished = true;
    ended_early = true;
  }
  request.cancelled->store(true);
  cv.notify_all();
  return true;
}

void StreamState::produce() {
  auto r = run(
      request,
      [this](const backend::Delta& d) {
        if (request.cancelled->load(std::memory_order_relaxed)) return false;
        {
          std::lock_guard lock(mu);
          if (ended_early) return false;
          if (!started) {
            started = true;
            writer->begin(pending, provenance(model_version));
          }
          writer->delta(pending, d);
        }
        cv.notify_one();
        return true;
      },
      [this](const std::string& source) { on_source(source); });
  {
    std::lock_guard lock(mu);
    if (ended_early) {
      if (r.ok()) outcome = std::move(r).value();
    } else if (r.ok()) {
      tier = r->tier;
      placement = placement_of(tier);
      if (!r->completion.model.empty()) model = r->completion.model;
      completion = r->completion;
      outcome = std::move(r).value();
      if (!started) writer->begin(pending, provenance(model_version));
      const std::string& version =
          completion.model_version.empty() ? model_version : completion.model_version;
      writer->finish(pending, completion, provenance(version));
    } else {
      error = r.error();
      if (started) {
        stream_error = openai::from_backend_error(*error);
        SseWriter::error(pending, *stream_error);
      }
    }
    finished = true;
  }
  cv.notify_one();
}

}  // namespace foreshore::serve
