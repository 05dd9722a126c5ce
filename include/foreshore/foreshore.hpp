// foreshore/foreshore.hpp: C++17 over the C API of foreshore.h, header-only,
// so that the library exports only C symbols and C++ users are not tied to
// the compiler it was built with. Same thread-safety as the C functions each
// method calls; failures throw foreshore::Error with the library's message.
#ifndef FORESHORE_HPP
#define FORESHORE_HPP

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

#include "foreshore.h"

namespace foreshore {

class Error : public std::runtime_error {
 public:
  Error(foreshore_status status, const std::string& message)
      : std::runtime_error(message), status_(status) {}
  foreshore_status status() const { return status_; }

 private:
  foreshore_status status_;
};

namespace detail {
inline void check(foreshore_status status) {
  if (status != FORESHORE_OK) {
    throw Error(status, std::string(foreshore_status_name(status)) + ": " + foreshore_last_error());
  }
}
// Takes ownership of a string the library returned.
inline std::string take(char* text) {
  std::string out = text != nullptr ? text : "";
  foreshore_string_free(text);
  return out;
}
// A std::function behind a foreshore_token_callback.
using TokenFunction = std::function<bool(std::string_view)>;
inline bool call_token_function(const char* text, size_t length, void* user_data) {
  return (*static_cast<TokenFunction*>(user_data))(std::string_view(text, length));
}
}  // namespace detail

// A GGUF model loaded in process (foreshore_model_*).
class Model {
 public:
  explicit Model(const std::string& name_or_path,
                 const foreshore_model_params& params = foreshore_model_default_params()) {
    foreshore_model* model = nullptr;
    detail::check(foreshore_model_load(name_or_path.c_str(), &params, &model));
    model_.reset(model);
  }
  // The whole text; `on_token` (may be empty) gets each piece and returns
  // false to cancel, which throws Error with FORESHORE_ERR_CANCELLED.
  std::string generate(const std::string& prompt,
                       foreshore_generate_params params = foreshore_generate_default_params(),
                       detail::TokenFunction on_token = {}) {
    if (on_token) {
      params.on_token = &detail::call_token_function;
      params.user_data = &on_token;
    }
    char* text = nullptr;
    const foreshore_status status =
        foreshore_model_generate(model_.get(), prompt.c_str(), &params, &text);
    std::string out = detail::take(text);
    detail::check(status);
    return out;
  }
  void cancel() { foreshore_model_cancel(model_.get()); }

 private:
  struct Free {
    void operator()(foreshore_model* m) const { foreshore_model_free(m); }
  };
  std::unique_ptr<foreshore_model, Free> model_;
};

// The hybrid pipeline in process (foreshore_hybrid_*).
class Hybrid {
 public:
  // `config_yaml`: the gateway configuration as YAML text.
  explicit Hybrid(const std::string& config_yaml) {
    foreshore_hybrid_params params = foreshore_hybrid_default_params();
    params.config_yaml = config_yaml.c_str();
    create(params);
  }
  explicit Hybrid(const foreshore_hybrid_params& params) { create(params); }

  // The decision for `request_json`, explained (POST /v1/route's JSON).
  std::string route(const std::string& request_json,
                    const foreshore_route_hints& hints = foreshore_route_hints{}) {
    char* json = nullptr;
    detail::check(foreshore_hybrid_route(hybrid_.get(), request_json.c_str(), &hints, &json));
    return detail::take(json);
  }

  struct Reply {
    int http_status = 0;
    std::string json;  // the chat.completion object, or the error object
  };
  // Runs the request; an answer that failed comes back as a Reply with its
  // status and error object, not as an exception (only misuse throws).
  Reply chat(const std::string& request_json,
             foreshore_chat_params params = foreshore_chat_default_params(),
             detail::TokenFunction on_token = {}) {
    if (on_token) {
      params.on_token = &detail::call_token_function;
      params.user_data = &on_token;
    }
    char* json = nullptr;
    Reply reply;
    const foreshore_status status = foreshore_hybrid_chat(hybrid_.get(), request_json.c_str(),
                                                          &params, &json, &reply.http_status);
    reply.json = detail::take(json);
    if (reply.http_status == 0) detail::check(status);
    return reply;
  }
  // 0 (none) .. 3 (critical); -1 goes back to the measured level.
  void set_memory_pressure(int level) {
    detail::check(foreshore_hybrid_set_memory_pressure(hybrid_.get(), level));
  }

 private:
  void create(const foreshore_hybrid_params& params) {
    foreshore_hybrid* hybrid = nullptr;
    detail::check(foreshore_hybrid_create(&params, &hybrid));
    hybrid_.reset(hybrid);
  }
  struct Free {
    void operator()(foreshore_hybrid* h) const { foreshore_hybrid_free(h); }
  };
  std::unique_ptr<foreshore_hybrid, Free> hybrid_;
};

}  // namespace foreshore

#endif  // FORESHORE_HPP
