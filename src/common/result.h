// Result<T>: the error-carrying return type used across module boundaries.
// Errors are values; exceptions are reserved for programmer errors.
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace foreshore {

// Broad error kinds; front ends map them to exit codes and HTTP statuses.
enum class ErrorKind {
  kInvalidArgument,    // caller passed something unusable (bad flag, malformed JSON)
  kNotFound,           // file, model or key does not exist
  kCorrupt,            // a file or stream is malformed, truncated or hostile
  kUnsupported,        // valid but not implemented here (unknown tensor type, architecture)
  kResourceExhausted,  // context overflow, memory budget, queue full
  kUnavailable,        // an upstream or tier cannot serve right now
  kDeadlineExceeded,
  kCancelled,
  kPermissionDenied,  // data may not go where it was about to go (the egress guard)
  kIo,
  kInternal,
};

struct Error {
  ErrorKind kind = ErrorKind::kInternal;
  // Says what was wrong, where, and what to do about it.
  std::string message;
  // The HTTP status an upstream answered, when the error came from one (0 otherwise).
  int upstream_status = 0;
  // Seconds the upstream asked us to wait (Retry-After), 0 when not given.
  double retry_after_seconds = 0.0;
  // The upstream's own error code and the field it blamed, when it said
  // (OpenAI's error.code and error.param): passed on to the client.
  std::string upstream_code;
  std::string upstream_param;
};

inline Error make_error(ErrorKind kind, std::string message) {
  Error e;
  e.kind = kind;
  e.message = std::move(message);
  return e;
}

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT: implicit by design
  Result(Error error) : v_(std::move(error)) {}  // NOLINT: implicit by design

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & {
    assert(ok());
    return std::get<0>(v_);
  }
  const T& value() const& {
    assert(ok());
    return std::get<0>(v_);
  }
  T&& value() && {
    assert(ok());
    return std::get<0>(std::move(v_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  const Error& error() const {
    assert(!ok());
    return std::get<1>(v_);
  }

 private:
  std::variant<T, Error> v_;
};

// Result of an operation that yields nothing but can fail.
class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT
  static Status Ok() { return Status(); }
  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const {
    assert(!ok_);
    return error_;
  }

 private:
  Error error_;
  bool ok_ = true;
};

}  // namespace foreshore

// Propagates an error from an expression returning Result<T> or Status.
#define FSH_CONCAT_INNER(a, b) a##b
#define FSH_CONCAT(a, b) FSH_CONCAT_INNER(a, b)
#define FSH_TRY_STATUS(expr)                           \
  do {                                                 \
    auto fsh_status_ = (expr);                         \
    if (!fsh_status_.ok()) return fsh_status_.error(); \
  } while (0)
#define FSH_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.error();              \
  lhs = std::move(tmp).value()
#define FSH_ASSIGN_OR_RETURN(lhs, expr) \
  FSH_ASSIGN_OR_RETURN_IMPL(FSH_CONCAT(fsh_result_, __LINE__), lhs, expr)
