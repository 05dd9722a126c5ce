// HTTP plumbing every handler of the gateway shares: what a handler reads of a
// request and what it answers, free of the HTTP library, and the one adapter
// between them and httplib; bearer keys, the error reply, authentication, and
// the gateway's own refusals.
#pragma once

#include <httplib.h>

#include <functional>
#include <memory>
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
  std::vector<std::pair<std::string, std::string>> headers;  // as sent, names in any case
  std::string path_match;  // what the route's pattern captured (a key id, a model id)
  std::string body;
  // Why the body could not be read whole (larger than server.max_body_bytes,
  // cut off); the handler answers with it.
  std::optional<openai::ApiError> body_error;

  // The value of the header `name`, in any case; empty without one.
  std::string_view header(std::string_view name) const;
  std::string_view authorization() const { return header("Authorization"); }
};

// A reply body sent piece by piece after the status and headers (server-sent
// events).
struct StreamedBody {
  // Waits a little for the next piece and leaves it in `piece` (empty when
  // none came in time); false once `piece` was the last one.
  std::function<bool(std::string& piece)> next;
  // Called once, when the last piece has been written (`whole`) or the reply
  // was abandoned: the client went away or a write failed.
  std::function<void(bool whole)> close;
};

// What a handler answers: write_reply() puts it into the HTTP library's
// response, so that handlers never see that library (as llama.cpp's
// server-http.cpp keeps its own out of its handlers).
struct HttpReply {
  int status = 200;
  std::string content_type = kJson;
  std::string body;                                          // unless `stream` is set
  std::vector<std::pair<std::string, std::string>> headers;  // besides Content-Type
  std::shared_ptr<StreamedBody> stream;

  // Sets `name` to `value`, replacing an earlier value.
  void set_header(std::string_view name, std::string value);
};

HttpRequest http_request(const httplib::Request& req);
void write_reply(HttpReply reply, httplib::Response& res);
// A JSON body with `status`.
HttpReply json_reply(std::string body, int status = 200);
// `e` as OpenAI's error object with its status (and Retry-After).
HttpReply error_reply(const openai::ApiError& e);

bool constant_time_equal(std::string_view a, std::string_view b);
// The 401 to answer with when the gateway needs a key (server.api_keys, or
// server.admin_key_env, which issues virtual keys) and `authorization`
// carries none of the static ones; nullopt when the request may go on. A
// virtual key is checked before this (the caller looks it up).
std::optional<openai::ApiError> auth_error(const config::ServerConfig& server,
                                           std::string_view authorization);
// 503s of the gateway itself: draining for shutdown, tiers still loading.
openai::ApiError shutting_down();
openai::ApiError not_ready();

}  // namespace foreshore::serve
