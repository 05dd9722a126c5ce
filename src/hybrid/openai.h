// The OpenAI wire format, as the HTTP gateway (src/serve) and the C API
// (src/capi) both speak it: request parsing into the pipeline's Request with
// field-naming 400s, the error shape with the HTTP status OpenAI clients
// expect, and writers for completions and SSE chunks. Writers append to
// caller-owned buffers so the hot path can reuse them.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "backend/backend.h"
#include "common/json_text.h"
#include "common/result.h"
#include "common/utf8.h"
#include "hybrid/deployment.h"
#include "hybrid/request.h"

namespace foreshore::openai {

// An error as OpenAI clients expect it: {"error":{"message","type","param","code"}}.
struct ApiError {
  int status = 400;
  std::string type = "invalid_request_error";
  std::string message;
  std::string param;                 // empty: null
  std::string code;                  // empty: null
  double retry_after_seconds = 0.0;  // sent as Retry-After when > 0
};

ApiError invalid_request(std::string message, std::string param = {}, std::string code = {});
std::string error_json(const ApiError& error);
// The pipeline's refusal as HTTP: its kind sets the status and OpenAI's type.
ApiError api_error(const hybrid::Refusal& refusal);
// Maps a tier's failure to what the client sees (status, type, Retry-After);
// the message is the tier's own, which names the tier.
ApiError from_backend_error(const Error& error);

// Parses a client's body as one JSON object: refused, with the byte and the
// reason, when it is empty, not JSON, nested deeper than kMaxJsonDepth, not an
// object, or names a field twice (top level or in `metadata`).
std::optional<ApiError> parse_client_json(std::string_view body, nlohmann::json& doc);

// Parses and validates a request body; nullopt on success.
std::optional<ApiError> parse_request(hybrid::RequestKind kind, std::string_view body,
                                      hybrid::Request& out);

// Where a response ran: the x-foreshore-* headers and the body's "foreshore" object.
struct Provenance {
  std::string_view tier;
  std::string_view placement;  // device or cloud
  std::string_view model;
  std::string_view model_version;
  std::string_view decision_id;
  // Set for routed requests: the plan that ran and how it ended.
  std::string_view plan;
  bool degraded = false;
  std::string_view degraded_reason;  // why, when degraded
  bool escalated = false;
  std::optional<double> confidence;
};

void append_provenance(std::string& out, const Provenance& where);

// A whole non-streamed response body.
void append_completion(std::string& out, const hybrid::Request& request, std::string_view id,
                       int64_t created, const backend::Completion& completion,
                       const Provenance& where);

// A whole non-streamed answer as it goes to the client: the completion with
// its provenance, or the error object, and the HTTP status that goes with it.
struct Reply {
  int status = 200;
  std::string body;
};
Reply reply_to(const hybrid::Request& request, const hybrid::Answer& answer,
               std::string_view decision_id);

// Formats one streamed response as SSE events ("data: ...\n\n").
class SseWriter {
 public:
  SseWriter(const hybrid::Request& request, std::string id, int64_t created, std::string model);
  // Opens the stream (chat: the assistant role) with the provenance object.
  void begin(std::string& out, const Provenance& where) const;
  void delta(std::string& out, const backend::Delta& delta);
  // The chunk with finish_reason and provenance, the usage chunk when asked
  // for, then [DONE].
  void finish(std::string& out, const backend::Completion& completion,
              const Provenance& where) const;
  // An error event; the stream ends after it, without [DONE].
  static void error(std::string& out, const ApiError& error);

 private:
  void open_chunk(std::string& out, int32_t choice) const;

  hybrid::RequestKind kind_;
  bool include_usage_;
  bool logprobs_;
  std::string id_;
  std::string model_;
  std::string head_;  // the fields every chunk starts with, pre-rendered
  // n > 1: which choices have had their role ("assistant") sent.
  std::vector<bool> roles_sent_;
  // Completions: bytes of each choice's text sent so far (for text_offset).
  std::vector<size_t> text_sent_;
};

}  // namespace foreshore::openai
