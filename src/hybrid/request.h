// What the hybrid pipeline takes and what it refuses with, free of any
// transport: the HTTP gateway (src/serve) parses a body and headers into a
// Request and maps a Refusal's kind to an HTTP status; the C API does the
// same with its own arguments.
#pragma once

#include <string>

#include "backend/backend.h"
#include "common/result.h"

namespace foreshore::hybrid {

enum class RequestKind { kChat, kCompletion };

// A parsed chat or completion request.
struct Request {
  RequestKind kind = RequestKind::kChat;
  std::string model;  // as the client named it; empty when not given
  bool stream = false;
  bool include_usage = false;
  backend::BackendRequest backend;  // messages or prompt, and parameters
  std::string data_class;           // metadata.data_class, when given
  std::string user;  // OpenAI's end-user id; pins a conversation like x-foreshore-session
};

// Why the pipeline did not answer; each front end says it its own way (an
// HTTP status, a C API status).
enum class RefusalKind {
  kInvalidRequest,  // the request or a hint is malformed, or asks what cannot be done
  kNotFound,        // a model or policy name the gateway does not know
  kForbidden,       // the data class or the key forbids every tier that could serve
  kRateLimited,     // a request or token rate limit; retry after retry_after_seconds
  kOverBudget,      // a spend budget is used up
  kUnavailable,     // no tier can serve now (down, breaker open, state unreachable)
  kTimeout,         // the deadline passed before an answer
  kUpstream,        // a cloud tier answered, but not usefully
  kCancelled,       // the caller went away
  kInternal,        // a bug of ours
};

struct Refusal {
  RefusalKind kind = RefusalKind::kInvalidRequest;
  std::string message;               // what was wrong and what to do
  std::string param;                 // the request field or hint at fault; empty: none
  std::string code;                  // a stable machine-readable reason, e.g. "budget_exceeded"
  double retry_after_seconds = 0.0;  // > 0: when a retry may succeed
  int upstream_status = 0;           // the cloud tier's own HTTP status, when it gave one
};

Refusal invalid_request(std::string message, std::string param = {}, std::string code = {});
// The status an outcome is recorded with in the audit row and the decision
// log, in HTTP's numbers because that is what those records have always held
// (and what the OpenAI front ends answer with): 200 for an answer; 499 when
// the caller went away.
int recorded_status(const Refusal& refusal);
// What a tier's failure means for the caller; the message is the tier's own,
// which names the tier.
Refusal refusal_from_error(const Error& error);

}  // namespace foreshore::hybrid
