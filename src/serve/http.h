// HTTP plumbing every handler of the gateway shares: what a handler reads of a
// request and what it answers, free of the HTTP library, and the one adapter
// between them and httplib; bearer keys, the error reply, authentication, and
// the gateway's own refusals.
#pragma once

#include <httplib.h>

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "hybrid/config.h"
#include "hybrid/openai.h"

namespace foreshore::serve {

inline constexpr const char* kJson = "application/json";

// What a handler reads of a request.
struct HttpRequest {
  std::string method;
  std::string authorization;  // the Authorization header; empty without one
  std::string path_match;     // what the route's pattern captured (a key id, a model id)
  std::string body;
};

// What a handler answers: write_reply() puts it into the HTTP library's
// response, so that handlers never see that library (as llama.cpp's
// server-http.cpp keeps its own out of its handlers).
struct HttpReply {
  int status = 200;
  std::string content_type = kJson;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // besides Content-Type
};

HttpRequest http_request(const httplib::Request& req);
void write_reply(const HttpReply& reply, httplib::Response& res);
// A JSON body with `status`.
HttpReply json_reply(std::string body, int status = 200);
// `e` as OpenAI's error object with its status (and Retry-After).
HttpReply error_reply(const openai::ApiError& e);

std::string_view header_value(const httplib::Request& req, const char* name);
bool constant_time_equal(std::string_view a, std::string_view b);
// The key of an 'Authorization: Bearer KEY' header; empty without one.
std::string_view bearer_key(std::string_view authorization);
std::string_view bearer_key(const httplib::Request& req);
// Writes `e` as OpenAI's error object with its status (and Retry-After).
void send_error(httplib::Response& res, const openai::ApiError& e);
// The 401 to answer with when server.api_keys is set and `authorization`
// carries none of them; nullopt when the request may go on.
std::optional<openai::ApiError> auth_error(const config::ServerConfig& server,
                                           std::string_view authorization);
// True when server.api_keys is empty or the request carries one of them;
// otherwise answers 401 and returns false.
bool check_auth(const config::ServerConfig& server, const httplib::Request& req,
                httplib::Response& res);
// 503s of the gateway itself: draining for shutdown, tiers still loading.
openai::ApiError shutting_down();
openai::ApiError not_ready();

}  // namespace foreshore::serve
