#include "serve/http.h"

#include <cmath>
#include <cstdint>
#include <string>

namespace foreshore::serve {

HttpRequest http_request(const httplib::Request& req) {
  HttpRequest out;
  out.method = req.method;
  out.authorization = header_value(req, "Authorization");
  if (req.matches.size() > 1) out.path_match = req.matches[1];
  out.body = req.body;
  return out;
}

void write_reply(const HttpReply& reply, httplib::Response& res) {
  res.status = reply.status;
  for (const auto& [name, value] : reply.headers) res.set_header(name, value);
  res.body = reply.body;
  res.set_header("Content-Type", reply.content_type);
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

std::string_view header_value(const httplib::Request& req, const char* name) {
  auto it = req.headers.find(name);
  return it == req.headers.end() ? std::string_view() : std::string_view(it->second);
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

std::string_view bearer_key(std::string_view authorization) {
  return authorization.starts_with("Bearer ") ? authorization.substr(7) : std::string_view();
}

std::string_view bearer_key(const httplib::Request& req) {
  return bearer_key(header_value(req, "Authorization"));
}

void send_error(httplib::Response& res, const openai::ApiError& e) {
  write_reply(error_reply(e), res);
}

std::optional<openai::ApiError> auth_error(const config::ServerConfig& server,
                                           std::string_view authorization) {
  const auto& keys = server.api_keys;
  if (keys.empty()) return std::nullopt;
  openai::ApiError e;
  e.status = 401;
  e.code = "invalid_api_key";
  if (authorization.empty()) {
    e.message = "Missing API key: send it as 'Authorization: Bearer KEY'";
  } else if (!authorization.starts_with("Bearer ")) {
    e.message = "The Authorization header must be 'Bearer KEY'";
  } else {
    const std::string_view key = authorization.substr(7);
    bool match = false;
    for (const auto& k : keys) match |= constant_time_equal(key, k);
    if (match) return std::nullopt;
    e.message = "Incorrect API key provided";
  }
  return e;
}

bool check_auth(const config::ServerConfig& server, const httplib::Request& req,
                httplib::Response& res) {
  auto e = auth_error(server, header_value(req, "Authorization"));
  if (e) send_error(res, *e);
  return !e;
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
