// The C API's hybrid half: the pipeline (hybrid::Deployment) run in process,
// with the OpenAI wire format (src/hybrid/openai.h) for requests and replies; no HTTP
// server is involved. An engine-only build has capi_hybrid_unsupported.cpp in
// its place.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "capi/capi_internal.h"
#include "common/utf8.h"
#include "hybrid/hybrid.h"
#include "hybrid/openai.h"
#include "observe/metrics.h"

using foreshore::capi::fail;
using foreshore::capi::succeed;
namespace backend = foreshore::backend;
namespace hybrid = foreshore::hybrid;
namespace openai = foreshore::openai;

struct foreshore_hybrid {
  foreshore::observe::MetricsRegistry metrics;
  // Cloud tiers check every body against the pipeline's detectors.
  std::shared_ptr<backend::EgressGuard> egress = std::make_shared<backend::EgressGuard>();
  std::unique_ptr<hybrid::Deployment> deployment;
  foreshore_log_callback log = nullptr;
  void* log_user_data = nullptr;
  std::string id_prefix;
  std::atomic<uint64_t> next_id{1};
  std::atomic<int32_t> in_flight{0};
};

namespace {

std::string_view or_empty(const char* text) {
  return text == nullptr ? std::string_view() : std::string_view(text);
}

// The hints as the gateway takes them in x-foreshore-* headers: plain text.
std::optional<openai::ApiError> check_hints(const foreshore_route_hints* hints) {
  if (hints == nullptr) return std::nullopt;
  for (const auto& [name, value] :
       {std::pair{"data_class", hints->data_class}, std::pair{"tier", hints->tier},
        std::pair{"latency_budget_ms", hints->latency_budget_ms},
        std::pair{"cost_ceiling_usd", hints->cost_ceiling_usd},
        std::pair{"session", hints->session}}) {
    const std::string_view text = or_empty(value);
    const bool control = std::any_of(text.begin(), text.end(), [](char c) {
      return static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
    });
    if (control || !foreshore::is_valid_utf8(text)) {
      return openai::invalid_request(
          std::string("The route hint ") + name + " is not valid UTF-8 text; pass plain text", name,
          "invalid_header");
    }
  }
  return std::nullopt;
}

// The routing hints; the body's metadata.data_class is read beside the
// hint's (the stricter holds) and its user stands in for a session.
hybrid::RouteHints route_hints(const foreshore_route_hints* hints, const hybrid::Request& api) {
  hybrid::RouteHints out;
  if (hints != nullptr) {
    out.data_class = or_empty(hints->data_class);
    out.latency_budget_ms = or_empty(hints->latency_budget_ms);
    out.cost_ceiling_usd = or_empty(hints->cost_ceiling_usd);
    out.session = or_empty(hints->session);
  }
  out.body_data_class = api.data_class;
  if (out.session.empty()) out.session = api.user;
  out.client = hybrid::client_identity("");
  return out;
}

std::string_view tier_hint(const foreshore_route_hints* hints) {
  return hints == nullptr ? std::string_view() : or_empty(hints->tier);
}

// The status for a reply's HTTP status.
foreshore_status status_of(int http_status) {
  if (http_status >= 200 && http_status < 300) return FORESHORE_OK;
  if (http_status == 404) return FORESHORE_ERR_NOT_FOUND;
  if (http_status == 499) return FORESHORE_ERR_CANCELLED;
  if (http_status >= 400 && http_status < 500 && http_status != 429) {
    return FORESHORE_ERR_INVALID_ARGUMENT;
  }
  return FORESHORE_ERR_UNAVAILABLE;
}

std::string new_id(foreshore_hybrid& h) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(h.next_id.fetch_add(1)));
  return h.id_prefix + buf;
}

openai::ApiError overloaded(int32_t limit) {
  openai::ApiError e;
  e.status = 429;
  e.type = "rate_limit_error";
  e.code = "overloaded";
  e.message = "The hybrid handle is serving its maximum of " + std::to_string(limit) +
              " concurrent requests (server.max_concurrent_requests); retry shortly";
  e.retry_after_seconds = 1;
  return e;
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
    handle->log = params->log;
    handle->log_user_data = params->log_user_data;
    std::random_device rd;
    char prefix[16];
    std::snprintf(prefix, sizeof prefix, "%08x", rd());
    handle->id_prefix = std::string("fsh") + prefix + "-";
    foreshore_hybrid* h = handle.get();
    handle->egress->set_policy([h](std::string_view tier, std::span<const std::string_view> strings,
                                   const backend::EgressClearance* skipped) {
      if (!h->deployment) return std::string("no configuration is loaded yet");
      return h->deployment->pipeline().egress_verdict(tier, strings, skipped);
    });
    auto deployment = hybrid::Deployment::create(std::move(parsed).value(), backend::create_backend,
                                                 nullptr, true, handle->metrics, handle->egress);
    if (!deployment.ok()) return fail(deployment.error());
    handle->deployment = std::move(deployment).value();
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
    hybrid::Request api;
    auto e = check_hints(hints);
    if (!e) e = openai::parse_request(hybrid::RequestKind::kChat, request_json, api);
    if (!e) {
      hybrid::Refusal refusal;
      auto explained = hybrid->deployment->explain_route(api, route_hints(hints, api),
                                                         tier_hint(hints), refusal);
      if (explained.ok()) {
        *out_json = foreshore::capi::copy_string(*explained);
        return succeed();
      }
      e = openai::api_error(refusal);
    }
    return fail(status_of(e->status), "foreshore_hybrid_route: HTTP " + std::to_string(e->status) +
                                          (e->code.empty() ? "" : " " + e->code) + ": " +
                                          e->message);
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
    const auto start = std::chrono::steady_clock::now();
    const hybrid::Deployment& deployment = *hybrid->deployment;
    const foreshore::config::ServerConfig& server = deployment.config().server;
    const std::string id = new_id(*hybrid);
    hybrid::Request api;
    openai::Reply reply;
    hybrid::Answer answer;
    auto e = check_hints(&p.hints);
    if (!e) e = openai::parse_request(hybrid::RequestKind::kChat, request_json, api);
    if (!e && hybrid->in_flight.fetch_add(1) >= server.max_concurrent_requests) {
      hybrid->in_flight.fetch_sub(1);
      e = overloaded(server.max_concurrent_requests);
    } else if (!e) {
      backend::DeltaSink on_delta = [&p](const backend::Delta& delta) {
        return delta.text.empty() || p.on_token == nullptr ||
               p.on_token(delta.text.data(), delta.text.size(), p.user_data);
      };
      answer = deployment.run(api, route_hints(&p.hints, api), tier_hint(&p.hints), id, on_delta);
      hybrid->in_flight.fetch_sub(1);
      reply = openai::reply_to(api, answer, id);
    }
    if (e) {
      reply.status = e->status;
      reply.body = openai::error_json(*e);
    }
    if (server.log_requests && hybrid->log != nullptr) {
      const double ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
              .count();
      const std::string plan =
          answer.decision ? std::string(foreshore::route::to_string(answer.decision->plan.kind))
                          : std::string();
      const std::string line = hybrid::request_log_line(
          id, hybrid::RequestKind::kChat, answer.tier ? answer.tier->config.name : "-",
          reply.status, ms, plan, answer.result ? &*answer.result : nullptr);
      hybrid->log(FORESHORE_LOG_INFO, line.c_str(), hybrid->log_user_data);
    }
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
  if (level > 3 || level < -1) {
    return fail(FORESHORE_ERR_INVALID_ARGUMENT,
                "foreshore_hybrid_set_memory_pressure: level " + std::to_string(level) +
                    " is out of range; pass 0 (none) to 3 (critical), or -1 to measure");
  }
  hybrid->deployment->pipeline().set_memory_pressure_level(level < 0 ? std::nullopt
                                                                     : std::optional<int>(level));
  return succeed();
}

}  // extern "C"
