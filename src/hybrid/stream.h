// A streamed run of the pipeline, free of any transport: the plan runs on the
// caller's thread and hands each event to a sink the caller supplies. The
// HTTP gateway's sink writes SSE (src/serve/stream.h); another front end
// writes what it speaks.
#pragma once

#include <string>

#include "backend/backend.h"
#include "common/result.h"
#include "exec/exec.h"

namespace foreshore::hybrid {

// Who answers a stream, as its headers and chunks name it.
struct StreamOrigin {
  std::string tier;
  std::string placement;  // device or cloud
  std::string model;
  std::string model_version;  // "unknown" when the tier does not say
};

// The events of one streamed run, each on the thread that runs the plan, in
// this order: source() any number of times while nothing has been sent, then
// begin() once before the first delta, delta() for each piece, and last one of
// finish() or fail(). finish() may come without begin() (an empty answer).
class StreamSink {
 public:
  virtual ~StreamSink() = default;
  // A fallback replaced the tier about to produce the first delta: headers
  // and chunks follow it, so that they name who really answers.
  virtual void source(const StreamOrigin& origin) = 0;
  // The first delta follows; `origin` produces it. False stops the run.
  virtual bool begin(const StreamOrigin& origin) = 0;
  // False stops the run (the caller went away or ended the stream).
  virtual bool delta(const backend::Delta& delta) = 0;
  // The plan ran to its end: `origin` is the tier that served, with the model
  // and version its completion reports (those it was known by otherwise).
  virtual void finish(exec::ExecutionResult result, const StreamOrigin& origin) = 0;
  // The plan failed; `started`: begin() had been called.
  virtual void fail(const Error& error, bool started) = 0;
};

}  // namespace foreshore::hybrid
