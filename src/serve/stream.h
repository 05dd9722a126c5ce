// One streamed generation of the HTTP gateway: the pipeline runs the plan on a
// producer thread (hybrid::Deployment::stream) and this sink turns its events
// into SSE text, which the HTTP worker drains into the socket.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "backend/backend.h"
#include "common/result.h"
#include "exec/exec.h"
#include "hybrid/openai.h"
#include "hybrid/request.h"
#include "hybrid/stream.h"

namespace foreshore::serve {

// The split lets the handler answer with a real status when the tier fails
// before its first token.
struct StreamState final : hybrid::StreamSink {
  std::mutex mu;
  std::condition_variable cv;
  std::string pending;
  bool started = false;
  bool finished = false;
  std::optional<Error> error;
  std::optional<openai::ApiError> stream_error;  // sent mid-stream as an SSE error event
  bool ended_early = false;                      // end() closed it; the producer adds nothing more
  backend::Completion completion;

  hybrid::Request api;  // to rebuild the writer for another tier's model
  std::optional<exec::ExecutionResult> outcome;
  // Owned copy: a producer abandoned at its deadline may outlive the request.
  backend::BackendRequest request;
  std::string tier, placement, model, model_version, decision_id, plan;
  std::optional<openai::SseWriter> writer;
  std::thread producer;

  openai::Provenance provenance(std::string_view version) const;

  // Gives back the request's admission slot and records how it ended, once:
  // when its last byte is about to go out, or when the response is torn down
  // early. Doing it before the last byte means a client that reads the end of
  // the stream finds its slot free and its request counted.
  std::function<void(bool success)> on_settle;
  std::atomic<bool> settled{false};
  void settle(bool success) {
    if (!settled.exchange(true, std::memory_order_acq_rel)) on_settle(success);
  }

  int64_t created = 0;

  // Closes a running stream with an error event (shutdown): what the client
  // has is marked incomplete, not silently cut. False when it had not begun
  // or had already finished.
  bool end(const openai::ApiError& why);

  // hybrid::StreamSink, called on the producer thread.
  void source(const hybrid::StreamOrigin& origin) override;
  bool begin(const hybrid::StreamOrigin& origin) override;
  bool delta(const backend::Delta& delta) override;
  void finish(exec::ExecutionResult result, const hybrid::StreamOrigin& origin) override;
  void fail(const Error& failure, bool began) override;
};

}  // namespace foreshore::serve
