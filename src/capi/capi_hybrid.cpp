// The C API's hybrid half: the gateway's pipeline (serve::Gateway) run in
// process, without binding a socket. An engine-only build has
// capi_hybrid_unsupported.cpp in its place.
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "capi/capi_internal.h"
#include "serve/serve.h"

using foreshore::capi::fail;
using foreshore::capi::succeed;
namespace serve = foreshore::serve;

struct foreshore_hybrid {
  std::unique_ptr<serve::Gateway> gateway;
};

namespace {

using Headers = std::vector<std::pair<std::string, std::string>>;

Headers hint_headers(const foreshore_route_hints* hints) {
  Headers headers;
  if (hints == nullptr) return headers;
  auto add = [&](const char* name, const char* value) {
    if (value != nullptr && *value != '\0') headers.emplace_back(name, value);
  };
  add("x-foreshore-data-class", hints->data_class);
  add("x-foreshore-tier", hints->tier);
  add("x-foreshore-latency-budget-ms", hints->latency_budget_ms);
  add("x-foreshore-cost-ceiling-usd", hints->cost_ceiling_usd);
  add("x-foreshore-session", hints->session);
  return headers;
}

// The status for a gateway reply's HTTP status.
foreshore_status status_of(int http_status) {
  if (http_status >= 200 && http_status < 300) return FORESHORE_OK;
  if (http_status == 404) return FORESHORE_ERR_NOT_FOUND;
  if (http_status == 499) return FORESHORE_ERR_CANCELLED;
  if (http_status >= 400 && http_status < 500 && http_status != 429) {
    return FORESHORE_ERR_INVALID_ARGUMENT;
  }
  return FORESHORE_ERR_UNAVAILABLE;
}

}  // namespace

extern "C" {

FORESHORE_API foreshore_hybrid_params foreshore_hybrid_default_params(void) {
  foreshore_hybrid_params p{};
  p.config_yaml = nullptr;
  p.config_path = nullptr;
  p.log = nullptr;
  p.log_user_data = nullptr;
  return p;
}

FORESHORE_API foreshore_status foreshore_hybrid_create(const foreshore_hybrid_params* params,
                                                       foreshore_hybrid** out_hybrid) {
  if (params == nullptr || out_hybrid == nullptr) {
    return fail(FORESHORE_ERR_INVALID_ARGUMENT,
                "foreshore_hybrid_create: params and out_hybrid must not be NULL");
  }
  *out_hybrid = nullptr;
  if ((params->config_yaml == nullptr) == (params->config_path == nullptr)) {
    return fail(FORESHORE_ERR_INVALID_ARGUMENT,
                "foreshore_hybrid_create: set exactly one of config_yaml (the YAML text) and "
                "config_path (a file)");
  }
  try {
    auto parsed = params->config_path != nullptr
                      ? foreshore::config::load_config(params->config_path)
                      : foreshore::config::parse_config(params->config_yaml,
                                                        "foreshore_hybrid_params.config_yaml");
    if (!parsed.ok()) return fail(parsed.error());
    auto handle = std::make_unique<foreshore_hybrid>();
    handle->gateway = std::make_unique<serve::Gateway>(std::move(parsed).value());
    if (params->log != nullptr) {
      const foreshore_log_callback log = params->log;
      void* user_data = params->log_user_data;
      handle->gateway->set_log_sink([log, user_data](std::string_view line) {
        const std::string text(line);
        log(FORESHORE_LOG_INFO, text.c_str(), user_data);
      });
    }
    if (auto loaded = handle->gateway->load_tiers(); !loaded.ok()) return fail(loaded.error());
    *out_hybrid = handle.release();
    return succeed();
  } catch (const std::exception& e) {
    return fail(FORESHORE_ERR_INTERNAL, std::string("foreshore_hybrid_create: ") + e.what());
  }
}

FORESHORE_API void foreshore_hybrid_free(foreshore_hybrid* hybrid) {
  delete hybrid;
}

FORESHORE_API foreshore_status foreshore_hybrid_route(foreshore_hybrid* hybrid,
                                                      const char* request_json,
                                                      const foreshore_route_hints* hints,
                                                      char** out_json) {
  if (hybrid == nullptr || request_json == nullptr || out_json == nullptr) {
    return fail(FORESHORE_ERR_INVALID_ARGUMENT,
                "foreshore_hybrid_route: hybrid, request_json and out_json must not be NULL");
  }
  *out_json = nullptr;
  try {
    auto explained = hybrid->gateway->explain_route(request_json, hint_headers(hints));
    if (!explained.ok()) return fail(explained.error());
    *out_json = foreshore::capi::copy_string(*explained);
    return succeed();
  } catch (const std::exception& e) {
    return fail(FORESHORE_ERR_INTERNAL, std::string("foreshore_hybrid_route: ") + e.what());
  }
}

FORESHORE_API foreshore_chat_params foreshore_chat_default_params(void) {
  foreshore_chat_params p{};
  p.hints = foreshore_route_hints{};
  p.on_token = nullptr;
  p.user_data = nullptr;
  return p;
}

FORESHORE_API foreshore_status foreshore_hybrid_chat(foreshore_hybrid* hybrid,
                                                     const char* request_json,
                                                     const foreshore_chat_params* params,
                                                     char** out_json, int* out_http_status) {
  if (hybrid == nullptr || request_json == nullptr || out_json == nullptr) {
    return fail(FORESHORE_ERR_INVALID_ARGUMENT,
                "foreshore_hybrid_chat: hybrid, request_json and out_json must not be NULL");
  }
  *out_json = nullptr;
  const foreshore_chat_params p = params ? *params : foreshore_chat_default_params();
  try {
    foreshore::backend::DeltaSink on_delta;
    if (p.on_token != nullptr) {
      on_delta = [&p](const foreshore::backend::Delta& delta) {
        return delta.text.empty() || p.on_token(delta.text.data(), delta.text.size(), p.user_data);
      };
    }
    serve::Gateway::Reply reply =
        hybrid->gateway->chat(request_json, hint_headers(&p.hints), on_delta);
    if (out_http_status != nullptr) *out_http_status = reply.status;
    *out_json = foreshore::capi::copy_string(reply.body);
    const foreshore_status status = status_of(reply.status);
    if (status == FORESHORE_OK) return succeed();
    return fail(status, "foreshore_hybrid_chat: the request failed with HTTP status " +
                            std::to_string(reply.status) + ": " + reply.body);
  } catch (const std::exception& e) {
    return fail(FORESHORE_ERR_INTERNAL, std::string("foreshore_hybrid_chat: ") + e.what());
  }
}

FORESHORE_API foreshore_status foreshore_hybrid_set_memory_pressure(foreshore_hybrid* hybrid,
                                                                    int level) {
  if (hybrid == nullptr) {
    return fail(FORESHORE_ERR_INVALID_ARGUMENT,
                "foreshore_hybrid_set_memory_pressure: hybrid must not be NULL");
  }
  auto set = hybrid->gateway->set_memory_pressure_level(level < 0 ? std::nullopt
                                                                  : std::optional<int>(level));
  if (!set.ok()) return fail(set.error());
  return succeed();
}

}  // extern "C"
