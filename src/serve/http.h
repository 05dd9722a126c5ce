// HTTP plumbing every handler of the gateway shares: headers, bearer keys,
// the error reply, authentication, and the gateway's own refusals.
#pragma once

#include <httplib.h>

#include <string_view>

#include "hybrid/config.h"
#include "hybrid/openai.h"

namespace foreshore::serve {

inline constexpr const char* kJson = "application/json";

std::string_view header_value(const httplib::Request& req, const char* name);
bool constant_time_equal(std::string_view a, std::string_view b);
// The key of an 'Authorization: Bearer KEY' header; empty without one.
std::string_view bearer_key(const httplib::Request& req);
// Writes `e` as OpenAI's error object with its status (and Retry-After).
void send_error(httplib::Response& res, const openai::ApiError& e);
// True when server.api_keys is empty or the request carries one of them;
// otherwise answers 401 and returns false.
bool check_auth(const config::ServerConfig& server, const httplib::Request& req,
                httplib::Response& res);
// 503s of the gateway itself: draining for shutdown, tiers still loading.
openai::ApiError shutting_down();
openai::ApiError not_ready();

}  // namespace foreshore::serve
