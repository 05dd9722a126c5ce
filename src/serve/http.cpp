#include "serve/http.h"

#include <cmath>
#include <cstdint>
#include <string>

namespace foreshore::serve {

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

std::string_view bearer_key(const httplib::Request& req) {
  std::string_view auth = header_value(req, "Authorization");
  return auth.starts_with("Bearer ") ? auth.substr(7) : std::string_view();
}

void send_error(httplib::Response& res, const openai::ApiError& e) {
  res.status = e.status;
  if (e.retry_after_seconds > 0) {
    res.set_header("Retry-After",
                   std::to_string(static_cast<int64_t>(std::ceil(e.retry_after_seconds))));
  }
  res.body = openai::error_json(e);
  res.set_header("Content-Type", kJson);
}

bool check_auth(const config::ServerConfig& server, const httplib::Request& req,
                httplib::Response& res) {
  const auto& keys = server.api_keys;
  if (keys.empty()) return true;
  std::string_view auth = header_value(req, "Authorization");
  openai::ApiError e;
  e.status = 401;
  e.code = "invalid_api_key";
  if (auth.empty()) {
    e.message = "Missing API key: send it as 'Authorization: Bearer KEY'";
  } else if (!auth.starts_with("Bearer ")) {
    e.message = "The Authorization header must be 'Bearer KEY'";
  } else {
    const std::string_view key = auth.substr(7);
    bool match = false;
    for (const auto& k : keys) match |= constant_time_equal(key, k);
    if (match) return true;
    e.message = "Incorrect API key provided";
  }
  send_error(res, e);
  return false;
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
