#include "serve/http.h"

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>

#include "hybrid/shared_limits.h"

namespace foreshore::serve {
namespace {

// HTTP header names compare without regard to case.
bool same_header_name(std::string_view a, std::string_view b) {
  return a.size() == b.size() && strncasecmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace

std::string_view HttpRequest::header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (same_header_name(key, name)) return value;
  }
  return {};
}

void HttpReply::set_header(std::string_view name, std::string value) {
  for (auto& [key, old] : headers) {
    if (same_header_name(key, name)) {
      old = std::move(value);
      return;
    }
  }
  headers.emplace_back(std::string(name), std::move(value));
}

HttpRequest http_request(const httplib::Request& req) {
  HttpRequest out;
  out.method = req.method;
  out.headers.assign(req.headers.begin(), req.headers.end());
  if (req.matches.size() > 1) out.path_match = req.matches[1];
  out.body = req.body;
  return out;
}

void write_reply(HttpReply reply, httplib::Response& res) {
  res.status = reply.status;
  for (const auto& [name, value] : reply.headers) res.set_header(name, value);
  if (!reply.stream) {
    res.body = std::move(reply.body);
    res.set_header("Content-Type", reply.content_type);
    return;
  }
  // The body's close() runs once: after the last piece is written, before
  // the stream's end goes out, or when httplib lets the reply go unfinished.
  auto closed = std::make_shared<bool>(false);
  res.set_chunked_content_provider(
      reply.content_type,
      [body = reply.stream, closed, piece = std::string()](size_t,
                                                           httplib::DataSink& sink) mutable {
        piece.clear();
        const bool more = body->next(piece);
        if (!piece.empty() && !sink.write(piece.data(), piece.size())) return false;
        if (!more) {
          *closed = true;
          body->close(true);
          sink.done();
        } else if (piece.empty() && !sink.is_writable()) {
          return false;
        }
        return true;
      },
      [body = reply.stream, closed](bool success) {
        if (!std::exchange(*closed, true)) body->close(success);
      });
}

HttpReply json_reply(std::string body, int status) {
  HttpReply reply;
  reply.status = status;
  reply.body = std::move(body);
  return reply;
}

HttpReply error_reply(const openai::ApiError& e) {
  HttpReply reply = json_reply(openai::error_json(e), e.status);
  if (e.retry_after_seconds > 0) {
    reply.headers.emplace_back(
        "Retry-After", std::to_string(static_cast<int64_t>(std::ceil(e.retry_after_seconds))));
  }
  return reply;
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

std::optional<openai::ApiError> auth_error(const config::ServerConfig& server,
                                           std::string_view authorization) {
  const auto& keys = server.api_keys;
  // Issuing virtual keys means clients need one: were a request without a
  // key served, a key's limits would bind only those who chose to send it.
  if (keys.empty() && server.admin_key.empty()) return std::nullopt;
  openai::ApiError e;
  e.status = 401;
  e.code = "invalid_api_key";
  if (authorization.empty()) {
    e.message = keys.empty() ? "Missing API key: this gateway takes virtual keys; send yours as "
                               "'Authorization: Bearer fsk-...'"
                             : "Missing API key: send it as 'Authorization: Bearer KEY'";
  } else if (const std::string_view key = hybrid::bearer_key(authorization); key.empty()) {
    e.message = "The Authorization header must be 'Bearer KEY'";
  } else {
    bool match = false;
    for (const auto& k : keys) match |= constant_time_equal(key, k);
    if (match) return std::nullopt;
    e.message = "Incorrect API key provided";
  }
  return e;
}

openai::ApiError shutting_down() {
  openai::ApiError e;
  e.status = 503;
  e.type = "service_unavailable";
  e.code = "shutting_down";
  e.message =
      "The gateway is shutting down and takes no new requests; retry on another instance "
      "or after it restarts";
  e.retry_after_seconds = 1;
  return e;
}

openai::ApiError not_ready() {
  openai::ApiError e;
  e.status = 503;
  e.type = "service_unavailable";
  e.code = "not_ready";
  e.message = "The gateway is still loading its tiers; retry shortly (GET /readyz tells when)";
  return e;
}

}  // namespace foreshore::serve
