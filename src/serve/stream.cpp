#include "serve/stream.h"

#include <utility>

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

void StreamState::source(const hybrid::StreamOrigin& origin) {
  std::lock_guard lock(mu);
  tier = origin.tier;
  placement = origin.placement;
  model = origin.model;
  model_version = origin.model_version;
  writer.emplace(api, decision_id, created, model);
}

bool StreamState::begin(const hybrid::StreamOrigin&) {
  std::lock_guard lock(mu);
  if (ended_early) return false;
  started = true;
  writer->begin(pending, provenance(model_version));
  return true;
}

bool StreamState::delta(const backend::Delta& d) {
  {
    std::lock_guard lock(mu);
    if (ended_early) return false;
    writer->delta(pending, d);
  }
  cv.notify_one();
  return true;
}

void StreamState::finish(exec::ExecutionResult result, const hybrid::StreamOrigin& origin) {
  {
    std::lock_guard lock(mu);
    if (!ended_early) {
      tier = origin.tier;
      placement = origin.placement;
      model = origin.model;
      completion = result.completion;
    }
    outcome = std::move(result);
    if (!ended_early) {
      // An answer with no text begins here, still under the version it was
      // known by; its last chunk carries the one the completion reports.
      if (!started) writer->begin(pending, provenance(model_version));
      writer->finish(pending, completion, provenance(origin.model_version));
    }
    finished = true;
  }
  cv.notify_one();
}

void StreamState::fail(const Error& failure, bool began) {
  {
    std::lock_guard lock(mu);
    if (!ended_early) {
      error = failure;
      if (began) {
        stream_error = openai::from_backend_error(failure);
        SseWriter::error(pending, *stream_error);
      }
    }
    finished = true;
  }
  cv.notify_one();
}

}  // namespace foreshore::serve
