#include "hybrid/request.h"

#include <utility>

namespace foreshore::hybrid {

Refusal invalid_request(std::string message, std::string param, std::string code) {
  Refusal r;
  r.message = std::move(message);
  r.param = std::move(param);
  r.code = std::move(code);
  return r;
}

int recorded_status(const Refusal& refusal) {
  switch (refusal.kind) {
    case RefusalKind::kInvalidRequest:
      // A cloud tier's 413 or 422 is passed on as it was said.
      return refusal.upstream_status == 413 || refusal.upstream_status == 422
                 ? refusal.upstream_status
                 : 400;
    case RefusalKind::kNotFound:
      return 404;
    case RefusalKind::kForbidden:
      return 403;
    case RefusalKind::kRateLimited:
    case RefusalKind::kOverBudget:
      return 429;
    case RefusalKind::kUnavailable:
      return 503;
    case RefusalKind::kTimeout:
      return 504;
    case RefusalKind::kUpstream:
      return 502;
    case RefusalKind::kCancelled:
      return 499;
    case RefusalKind::kInternal:
      return 500;
  }
  return 500;
}

Refusal refusal_from_error(const Error& error) {
  Refusal r;
  r.message = error.message;
  const int up = error.upstream_status;
  r.upstream_status = up;
  const bool exhausted = error.kind == ErrorKind::kResourceExhausted;
  // Only the embedded tier reports context overflow without a status; it
  // must not look retryable.
  const bool context_overflow =
      exhausted && up == 0 && error.message.find("context") != std::string::npos;
  if (error.kind == ErrorKind::kPermissionDenied) {
    r.kind = RefusalKind::kForbidden;
    r.code = "egress_refused";
  } else if (error.kind == ErrorKind::kCancelled) {
    // The client went away; nobody reads this, but logs and metrics do.
    r.kind = RefusalKind::kCancelled;
    r.code = "client_closed_request";
  } else if (up == 429 || (exhausted && up == 0 && !context_overflow)) {
    r.kind = RefusalKind::kRateLimited;
    r.code = up == 429 ? "upstream_rate_limited" : "overloaded";
    r.retry_after_seconds = up == 429 ? error.retry_after_seconds : 1.0;
  } else if (up == 400 || up == 413 || up == 422 || context_overflow ||
             (up == 0 && error.kind == ErrorKind::kInvalidArgument)) {
    r.kind = RefusalKind::kInvalidRequest;
    // What the upstream said was wrong, in its words, when it said.
    r.code = exhausted ? "context_length_exceeded" : error.upstream_code;
    r.param = error.upstream_param;
  } else if (error.kind == ErrorKind::kDeadlineExceeded || up == 408 || up == 504) {
    r.kind = RefusalKind::kTimeout;
    r.code = "deadline_exceeded";
  } else if (up != 0 || error.kind == ErrorKind::kCorrupt) {
    // The tier answered, but not usefully (5xx, a rejected key, garbage).
    r.kind = RefusalKind::kUpstream;
    r.code = up != 0 ? "upstream_status_" + std::to_string(up) : "upstream_malformed";
  } else if (error.kind == ErrorKind::kInternal) {
    r.kind = RefusalKind::kInternal;
  } else {
    r.kind = RefusalKind::kUnavailable;
    r.code = "tier_unavailable";
    r.retry_after_seconds = error.retry_after_seconds;
  }
  return r;
}

}  // namespace foreshore::hybrid
