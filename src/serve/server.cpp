#include "serve/server.h"

#include <httplib.h>
#include <strings.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/kernels.h"
#include "hybrid/hybrid.h"
#include "hybrid/openai.h"
#include "serve/admin.h"
#include "serve/health.h"
#include "serve/http.h"
#include "serve/models.h"
#include "serve/stream.h"
#include "serve/worker_pool.h"

namespace foreshore::serve {
namespace {

// The one method each path of the gateway takes ("" for a path it does not
// serve), for the 405 a request with another method gets.
std::string_view allowed_method(std::string_view path) {
  static constexpr std::pair<std::string_view, std::string_view> kPaths[] = {
      {"/healthz", "GET"},
      {"/readyz", "GET"},
      {"/metrics", "GET"},
      {"/v1/models", "GET"},
      {"/v1/chat/completions", "POST"},
      {"/v1/completions", "POST"},
      {"/v1/route", "POST"},
      {"/v1/feedback", "POST"},
      {"/v1/router/status", "GET"},
      {"/admin/keys", "POST"}};
  for (const auto& [p, method] : kPaths) {
    if (path == p) return method;
  }
  if (path.starts_with("/v1/models/")) return "GET";
  if (path.starts_with("/admin/keys/")) return "DELETE";
  return {};
}

using openai::api_error;
using openai::ApiError;
using openai::error_json;
using openai::from_backend_error;
using openai::invalid_request;
using openai::parse_request;

using Clock = std::chrono::steady_clock;

// One line of printable text, as a header value must be; long reasons are cut.
std::string header_safe(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, 240)) out += static_cast<unsigned char>(c) < 0x20 ? ' ' : c;
  return out;
}

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

struct Tier {
  backend::TierConfig config;
  std::shared_ptr<backend::Backend> backend;
  // Series looked up once so the request path only does atomic adds.
  observe::Counter* ok_chat = nullptr;
  observe::Counter* ok_completions = nullptr;
  observe::Counter* prompt_tokens = nullptr;
  observe::Counter* completion_tokens = nullptr;
  observe::Histogram* latency = nullptr;
  observe::Histogram* ttft = nullptr;
};

// Everything one configuration defines: the pipeline's deployment (tiers,
// names, router) and what the gateway keeps beside it per tier. A reload
// builds a new one and swaps it in whole; requests keep the one they started
// with until they end, so none sees half of each.
struct Deployment {
  std::unique_ptr<hybrid::Deployment> core;
  std::vector<Tier> tiers;  // in core's order
  std::string models_json;
  // Each listed model's object, by id, for GET /v1/models/{id}.
  std::unordered_map<std::string, std::string> model_json;

  const config::GatewayConfig& config() const { return core->config(); }
  hybrid::Pipeline& pipeline() const { return core->pipeline(); }
  Tier* find_tier(std::string_view name) {
    for (auto& t : tiers) {
      if (t.config.name == name) return &t;
    }
    return &tiers[core->default_tier()];
  }
};

// Counts a request from its first byte to its last, so that a drain waits for
// it; a stream moves it into its completion callback.
class ActiveRequest {
 public:
  explicit ActiveRequest(std::atomic<int32_t>& active) : active_(&active) {
    active_->fetch_add(1, std::memory_order_seq_cst);
  }
  ActiveRequest(ActiveRequest&& other) noexcept : active_(std::exchange(other.active_, nullptr)) {}
  ActiveRequest& operator=(ActiveRequest&&) = delete;
  ~ActiveRequest() {
    if (active_ != nullptr) active_->fetch_sub(1, std::memory_order_seq_cst);
  }

 private:
  std::atomic<int32_t>* active_;
};

}  // namespace

struct Gateway::Impl {
  const config::GatewayConfig config;  // as started; server.host/port/limits stay in force
  httplib::Server http;
  observe::MetricsRegistry metrics;
  mutable std::mutex live_mu;
  std::shared_ptr<Deployment> live;
  std::atomic<bool> ready{false};
  std::atomic<int32_t> in_flight{0};
  std::atomic<int32_t> active{0};

  std::atomic<bool> draining{false};
  std::atomic<bool> run_started{false};
  std::atomic<bool> run_finished{false};
  std::atomic<bool> stopping{false};
  std::string id_prefix;
  std::atomic<uint64_t> next_id{1};
  int64_t started_at = std::time(nullptr);
  observe::Gauge* in_flight_gauge = nullptr;
  int listen_socket = -1;  // set while httplib creates it
  observe::Counter* reloads_ok = nullptr;
  observe::Counter* reloads_failed = nullptr;
  // On every tier: cloud tiers check each body they send against the live
  // deployment's detectors (a reload's new rules apply at once).
  std::shared_ptr<backend::EgressGuard> egress = std::make_shared<backend::EgressGuard>();
  // Running streams, for end_streams() at shutdown.
  std::mutex streams_mu;
  std::vector<std::weak_ptr<StreamState>> streams;

  explicit Impl(config::GatewayConfig c) : config(std::move(c)) {
    egress->set_policy([this](std::string_view tier, std::span<const std::string_view> strings,
                              const backend::EgressClearance* skipped) {
      auto dep = deployment();
      if (!dep) return std::string("no configuration is loaded yet");
      return dep->pipeline().egress_verdict(tier, strings, skipped);
    });
    std::random_device rd;
    char buf[16];
    std::snprintf(buf, sizeof buf, "%08x", rd());
    id_prefix = std::string("fsh") + buf + "-";
    in_flight_gauge = &metrics.gauge("foreshore_requests_in_flight",
                                     "Generation requests being served now.", {}, {});
    // A fleet's dashboards then show which machines run a slower kernel path.
    metrics
        .gauge("foreshore_cpu_level_info",
               "The instruction-set level the engine's kernels run at (value 1).", {"level"},
               {std::string(engine::cpu_level_name(engine::cpu_level()))})
        .set(1);
    const char* reload_help =
        "Configuration reloads (SIGHUP) by outcome; a failed one changes nothing.";
    reloads_ok =
        &metrics.counter("foreshore_config_reloads_total", reload_help, {"outcome"}, {"ok"});
    reloads_failed =
        &metrics.counter("foreshore_config_reloads_total", reload_help, {"outcome"}, {"failed"});
    setup_routes();
  }

  std::string new_id() {
    char buf[24];
    const int n = std::snprintf(buf, sizeof buf, "%llx",
                                static_cast<unsigned long long>(next_id.fetch_add(1)));
    std::string id;
    id.reserve(id_prefix.size() + static_cast<size_t>(n));
    id += id_prefix;
    id.append(buf, static_cast<size_t>(n));
    return id;
  }

  void setup_routes() {
    const config::ServerConfig& s = config.server;
    const size_t workers = s.worker_threads > 0
                               ? static_cast<size_t>(s.worker_threads)
                               : static_cast<size_t>(s.max_concurrent_requests) + 64;
    const std::chrono::milliseconds idle_timeout(s.worker_idle_timeout_ms);
    observe::Gauge* worker_gauge = &metrics.gauge(
        "foreshore_http_worker_threads",
        "HTTP worker threads alive; each holds one connection while it is open.", {}, {});
    http.new_task_queue = [workers, idle_timeout, worker_gauge] {
      return new ElasticPool(workers, kMinWorkerThreads, idle_timeout, worker_gauge);
    };
    http.set_payload_max_length(s.max_body_bytes);
    // httplib's default options set SO_REUSEPORT, which lets a second gateway
    // bind the same port and silently take a share of its connections.
    // SO_REUSEADDR alone still allows a restart while old connections linger
    // in TIME_WAIT.
    http.set_socket_options([this](int sock) {
      const int yes = 1;
      ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
      listen_socket = sock;
    });
    http.set_tcp_nodelay(true);
    // httplib closes keep-alive connections after 5 requests by default, which
    // would make proxied clients reconnect all the time.
    http.set_keep_alive_max_count(100000);

    // Handlers that compute a reply (http.h); this adapter alone hands them
    // the request and writes what they answer.
    const auto reply = [](auto handler) {
      return [handler](const httplib::Request& req, httplib::Response& res) {
        write_reply(handler(http_request(req)), res);
      };
    };
    http.Get("/healthz",
             reply([](const HttpRequest&) { return json_reply("{\"status\":\"ok\"}"); }));
    http.Get("/readyz", reply([this](const HttpRequest&) { return readyz(); }));
    http.Get("/metrics", reply([this](const HttpRequest&) {
               in_flight_gauge->set(in_flight.load(std::memory_order_relaxed));
               if (auto dep = deployment()) dep->pipeline().collect_metrics();
               HttpReply out = json_reply(metrics.render());
               out.content_type = "text/plain; version=0.0.4; charset=utf-8";
               return out;
             }));
    const auto admin_keys = reply([this](const HttpRequest& req) {
      auto dep = deployment();
      return answer_admin_keys(dep ? dep->config() : config, dep ? &dep->pipeline() : nullptr, req);
    });
    http.Post("/admin/keys", admin_keys);
    http.Delete(R"(/admin/keys/([0-9a-f]+))", admin_keys);
    http.Get("/v1/models", reply([this](const HttpRequest& req) { return models(req); }));
    // Model ids may hold slashes ("foreshore/cascade", "org/name").
    http.Get(R"(/v1/models/(.+))", reply([this](const HttpRequest& req) { return model(req); }));
    // Generation and routing read their bodies themselves, under
    // server.max_body_bytes whatever the Content-Type (read_body).
    const auto reply_read = [this](auto handler) {
      return [this, handler](const httplib::Request& req, httplib::Response& res,
                             const httplib::ContentReader& reader) {
        HttpRequest request = http_request(req);
        // A request with neither Content-Length nor chunked encoding has no
        // body (RFC 9112 6.3); the HTTP library would wait for the client to
        // close the connection instead.
        const bool has_body =
            req.has_header("Content-Length") ||
            req.get_header_value("Transfer-Encoding").find("chunked") != std::string::npos;
        if (has_body) request.body_error = read_body(reader, res, request.body);
        write_reply(handler(request), res);
      };
    };
    http.Post("/v1/chat/completions", reply_read([this](const HttpRequest& req) {
                return generate(hybrid::RequestKind::kChat, req);
              }));
    http.Post("/v1/route", reply_read([this](const HttpRequest& req) { return route(req); }));
    http.Post("/v1/feedback", reply_read([this](const HttpRequest& req) {
                if (req.body_error) return error_reply(*req.body_error);
                auto dep = deployment();
                if (auto e = authenticate(dep.get(), req)) return error_reply(*e);
                return answer_feedback(dep ? &dep->pipeline() : nullptr, req);
              }));
    http.Get("/v1/router/status", reply([this](const HttpRequest& req) {
               auto dep = deployment();
               if (auto e = authenticate(dep.get(), req)) return error_reply(*e);
               return answer_router_status(dep ? &dep->pipeline() : nullptr);
             }));
    http.Post("/v1/completions", reply_read([this](const HttpRequest& req) {
                return generate(hybrid::RequestKind::kCompletion, req);
              }));

    // Browsers: pages from server.cors_origins may call the gateway. A
    // preflight is answered here; every answer names the origin it allows.
    http.Options(R"(.*)", [this](const httplib::Request& req, httplib::Response& res) {
      res.status = 204;
      const std::string_view method = allowed_method(req.path);
      res.set_header("Allow",
                     method.empty() ? std::string("OPTIONS") : std::string(method) + ", OPTIONS");
      if (cors_origin(req).empty()) return;
      res.set_header("Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS");
      res.set_header("Access-Control-Allow-Headers",
                     req.has_header("Access-Control-Request-Headers")
                         ? req.get_header_value("Access-Control-Request-Headers")
                         : std::string("Authorization, Content-Type"));
      res.set_header("Access-Control-Max-Age", "600");
    });
    http.set_post_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
      const std::string origin = cors_origin(req);
      if (origin.empty()) return;
      res.set_header("Access-Control-Allow-Origin", origin);
      res.set_header("Vary", "Origin");
      res.set_header("Access-Control-Expose-Headers",
                     "x-foreshore-tier, x-foreshore-model, x-foreshore-model-version, "
                     "x-foreshore-decision-id, x-foreshore-plan, x-foreshore-policy, "
                     "x-foreshore-degraded, x-foreshore-degraded-reason, x-foreshore-escalated, "
                     "x-foreshore-confidence, x-foreshore-ignored-params, Retry-After");
    });

    // Whatever httplib answers by itself (unknown path, oversized or
    // malformed request) still gets OpenAI's error shape.
    http.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request& req,
                                                                   httplib::Response& res) {
      if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
      ApiError e;
      // A known path asked with another method: 405 naming the one it takes.
      const std::string_view allowed = allowed_method(req.path);
      if (!allowed.empty() && req.method != allowed && (res.status == 404 || res.status == 400)) {
        e = invalid_request(
            req.method + " " + req.path + " is not served; use " + std::string(allowed), {},
            "method_not_allowed");
        e.status = 405;
        res.status = 405;
        res.set_header("Allow", std::string(allowed));
        res.set_content(error_json(e), kJson);
        return httplib::Server::HandlerResponse::Handled;
      }
      switch (res.status) {
        case 404:
          e = invalid_request("Unknown path " + req.method + " " + req.path +
                                  "; see /v1/chat/completions, /v1/completions, /v1/models",
                              {}, "not_found");
          e.status = 404;
          break;
        case 413:
          e = invalid_request("The request body is too large", {}, "request_too_large");
          e.status = 413;
          break;
        default:
          e = invalid_request("The HTTP request could not be handled (" +
                              std::to_string(res.status) + ")");
          e.status = res.status;
          if (res.status >= 500) e.type = "server_error";
      }
      res.set_content(error_json(e), kJson);
      return httplib::Server::HandlerResponse::Handled;
    }));
    http.set_exception_handler(
        [](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
          std::string what = "unknown exception";
          try {
            std::rethrow_exception(ep);
          } catch (const std::exception& ex) {
            what = ex.what();
          } catch (...) {
          }
          ApiError e;
          e.status = 500;
          e.type = "server_error";
          e.message = "internal error: " + what;
          res.status = 500;
          res.set_content(error_json(e), kJson);
        });
  }

  // GET /readyz: whether the gateway serves, and each tier's state.
  HttpReply readyz() const {
    auto dep = deployment();
    return readiness(dep ? dep->core.get() : nullptr, draining.load());
  }

  // Whether the client may use the /v1 endpoints: a virtual key
  // (virtual_keys.h), looked up in the shared state and then in force as
  // `virtual_key`, or one of server.api_keys. A key with the virtual keys'
  // prefix that stands for none (revoked, mistyped) is refused, never served
  // as if no key had been sent.
  std::optional<ApiError> authenticate(const Deployment* dep, const HttpRequest& req,
                                       std::optional<hybrid::VirtualKey>& virtual_key) const {
    const config::ServerConfig& server = dep ? dep->config().server : config.server;
    if (dep) {
      auto found = hybrid::find_virtual_key(dep->pipeline().shared_state(),
                                            hybrid::bearer_key(req.authorization()));
      ApiError e;
      e.status = 401;
      e.code = "invalid_api_key";
      if (!found.ok()) {
        e.message = found.error().message;
        return e;
      }
      virtual_key = std::move(found).value();
      if (virtual_key && virtual_key->expires_at != 0 &&
          virtual_key->expires_at <= std::time(nullptr)) {
        e.message = "The virtual key " + virtual_key->id + " has expired; ask for a new one";
        return e;
      }
      if (virtual_key) return std::nullopt;
    }
    return auth_error(server, req.authorization());
  }
  std::optional<ApiError> authenticate(const Deployment* dep, const HttpRequest& req) const {
    std::optional<hybrid::VirtualKey> unused;
    return authenticate(dep, req, unused);
  }

  // GET /v1/models: every name a client may send.
  HttpReply models(const HttpRequest& req) const {
    auto dep = deployment();
    if (auto e = authenticate(dep.get(), req)) return error_reply(*e);
    if (!dep) return error_reply(not_ready());
    return json_reply(dep->models_json);
  }

  // GET /v1/models/{id}: one of them.
  HttpReply model(const HttpRequest& req) const {
    auto dep = deployment();
    if (auto e = authenticate(dep.get(), req)) return error_reply(*e);
    if (!dep) return error_reply(not_ready());
    const std::string& id = req.path_match;
    auto it = dep->model_json.find(id);
    if (it == dep->model_json.end()) {
      ApiError e = invalid_request(
          "The model '" + id + "' does not exist here; GET /v1/models lists those that do", "model",
          "model_not_found");
      e.status = 404;
      return error_reply(e);
    }
    return json_reply(it->second);
  }

  std::shared_ptr<Deployment> deployment() const {
    std::lock_guard lock(live_mu);
    return live;
  }

  // The value of Access-Control-Allow-Origin for this request: its Origin
  // when server.cors_origins lists it (or "*"), empty otherwise.
  std::string cors_origin(const httplib::Request& req) const {
    if (!req.has_header("Origin")) return {};
    auto dep = deployment();
    const auto& allowed = (dep ? dep->config().server : config.server).cors_origins;
    const std::string origin = req.get_header_value("Origin");
    for (const auto& a : allowed) {
      if (a == "*") return "*";
      if (a == origin) return origin;
    }
    return {};
  }

  static ApiError overloaded(const config::ServerConfig& server) {
    ApiError e;
    e.status = 429;
    e.type = "rate_limit_error";
    e.code = "overloaded";
    e.message = "The gateway is serving its maximum of " +
                std::to_string(server.max_concurrent_requests) +
                " concurrent requests; retry shortly";
    e.retry_after_seconds = 1;
    return e;
  }

  // `server`: the configuration the request ran under (it says whether to log).
  // `outcome`: how a routed request ran, named in the log line (plan, degradation).
  void record(const config::ServerConfig& server, const Tier* tier, hybrid::RequestKind kind,
              int status, Clock::time_point start, const backend::Completion* completion,
              std::string_view id, const exec::ExecutionResult* outcome = nullptr,
              std::string_view plan = {}) {
    const double ms = ms_since(start);
    const char* endpoint = kind == hybrid::RequestKind::kChat ? "chat" : "completions";
    if (tier != nullptr && status == 200) {
      (kind == hybrid::RequestKind::kChat ? tier->ok_chat : tier->ok_completions)->add();
    } else {
      metrics
          .counter("foreshore_requests_total", kRequestsHelp, {"tier", "endpoint", "status"},
                   {tier ? tier->config.name : "none", endpoint, std::to_string(status)})
          .add();
    }
    if (tier != nullptr) {
      tier->latency->observe(ms / 1e3);
      if (completion != nullptr) {
        tier->prompt_tokens->add(completion->usage.prompt_tokens);
        tier->completion_tokens->add(completion->usage.completion_tokens);
        if (completion->time_to_first_token_ms > 0) {
          tier->ttft->observe(completion->time_to_first_token_ms / 1e3);
        }
      }
    }
    if (server.log_requests) {
      const std::string line = hybrid::request_log_line(
          id, kind, tier ? std::string_view(tier->config.name) : "-", status, ms, plan, outcome);
      std::fprintf(stderr, "%s\n", line.c_str());
    }
  }

  static constexpr const char* kRequestsHelp =
      "Generation requests by tier, endpoint and outcome status (the HTTP status; for "
      "streams that failed after starting, the error's status; 499: the client went away).";

  // `reply` made the error reply to a request, and counted: `tier` is the one
  // it was meant for, when routing got that far. The headers already set stay.
  HttpReply refuse(HttpReply reply, const config::ServerConfig& server, const Tier* tier,
                   hybrid::RequestKind kind, Clock::time_point start, std::string_view id,
                   const ApiError& e) {
    HttpReply error = error_reply(e);
    reply.status = error.status;
    reply.content_type = std::move(error.content_type);
    reply.body = std::move(error.body);
    for (auto& [name, value] : error.headers) reply.set_header(name, std::move(value));
    record(server, tier, kind, e.status, start, nullptr, id);
    return reply;
  }

  // POST /v1/chat/completions and /v1/completions: the client admitted, then
  // generate_admitted().
  HttpReply generate(hybrid::RequestKind kind, const HttpRequest& req) {
    const auto start = Clock::now();
    ActiveRequest active_request(active);
    std::string id = new_id();
    HttpReply out;
    out.set_header("x-foreshore-decision-id", id);
    // The configuration this request runs under, even if a reload happens meanwhile.
    std::shared_ptr<Deployment> dep = deployment();
    const config::ServerConfig& server = dep ? dep->config().server : config.server;
    if (draining.load() || req.body_error) {
      out.set_header("Connection", "close");
      return refuse(std::move(out), server, nullptr, kind, start, id,
                    req.body_error ? *req.body_error : shutting_down());
    }
    std::optional<hybrid::VirtualKey> virtual_key;
    if (auto e = authenticate(dep.get(), req, virtual_key)) {
      return refuse(std::move(out), server, nullptr, kind, start, id, *e);
    }
    return generate_admitted(kind, req, std::move(out), start, std::move(id), std::move(dep),
                             std::move(active_request), std::move(virtual_key));
  }

  // Everything after the client is admitted: parse, route, run, answer in
  // `out` (whole, or as a stream). `virtual_key`: the client's, when it
  // authenticated with one (its limits apply).
  HttpReply generate_admitted(hybrid::RequestKind kind, const HttpRequest& req, HttpReply out,
                              Clock::time_point start, std::string id,
                              std::shared_ptr<Deployment> dep, ActiveRequest active_request,
                              std::optional<hybrid::VirtualKey> virtual_key) {
    const config::ServerConfig& server = dep ? dep->config().server : config.server;
    if (!dep) return refuse(std::move(out), server, nullptr, kind, start, id, not_ready());
    hybrid::Request api;
    auto e = check_hint_headers(req);
    if (!e) e = parse_request(kind, req.body, api);
    if (e) return refuse(std::move(out), server, nullptr, kind, start, id, *e);
    hybrid::RouteHints hints = route_hints(req, api);
    hints.virtual_key = std::move(virtual_key);

    // Admission after parsing, so malformed requests never take a slot.
    if (in_flight.fetch_add(1, std::memory_order_acq_rel) >= server.max_concurrent_requests) {
      in_flight.fetch_sub(1, std::memory_order_acq_rel);
      return refuse(std::move(out), server, nullptr, kind, start, id, overloaded(server));
    }
    hybrid::Answer answer = dep->core->admit(api, hints, req.header("x-foreshore-tier"), id);
    Tier* tier = answer.tier ? dep->find_tier(answer.tier->config.name) : nullptr;
    if (answer.refusal) {
      in_flight.fetch_sub(1, std::memory_order_acq_rel);
      return refuse(std::move(out), server, tier, kind, start, id, api_error(*answer.refusal));
    }
    const route::Decision& decision = *answer.decision;
    out.set_header("x-foreshore-plan", std::string(route::to_string(decision.plan.kind)));
    out.set_header("x-foreshore-policy", std::string(route::to_string(decision.policy)));
    if (api.stream) {
      api.backend.request_id = id;
      api.backend.deadline = start + std::chrono::milliseconds(server.request_timeout_ms);
      api.backend.cancelled = std::make_shared<std::atomic<bool>>(false);
      return stream(std::move(out), dep, std::move(active_request), kind, *tier, std::move(api),
                    std::move(hints), decision, std::move(id), start);
    }

    dep->core->execute(api, hints, answer, start);
    in_flight.fetch_sub(1, std::memory_order_acq_rel);
    Tier& served = *dep->find_tier(answer.tier->config.name);
    const backend::BackendInfo& info = served.backend->info();
    const backend::Completion* c = answer.result ? &answer.result->completion : nullptr;
    name_origin(out, served.config.name, c && !c->model.empty() ? c->model : info.model,
                std::string(or_unknown(c && !c->model_version.empty() ? c->model_version
                                                                      : info.model_version)));
    if (answer.refusal) {
      return refuse(std::move(out), server, &served, kind, start, id, api_error(*answer.refusal));
    }
    const exec::ExecutionResult& result = *answer.result;
    set_ignored_params(out, served, api);
    if (result.degraded) {
      out.set_header("x-foreshore-degraded", "true");
      out.set_header("x-foreshore-degraded-reason", header_safe(result.degraded_reason));
    }
    if (result.escalated) out.set_header("x-foreshore-escalated", "true");
    if (result.confidence) {
      out.set_header("x-foreshore-confidence", std::to_string(*result.confidence));
    }
    out.body = openai::reply_to(api, answer, id).body;
    out.content_type = kJson;
    record(server, &served, kind, 200, start, c, id, &result, route::to_string(decision.plan.kind));
    return out;
  }

  // Who answered (or failed), as the x-foreshore-* headers name it.
  static void name_origin(HttpReply& out, const std::string& tier, const std::string& model,
                          const std::string& model_version) {
    out.set_header("x-foreshore-tier", tier);
    out.set_header("x-foreshore-model", model);
    out.set_header("x-foreshore-model-version", model_version);
  }

  // An answer from the edge says which of the client's fields it ignored.
  static void set_ignored_params(HttpReply& out, const Tier& tier, const hybrid::Request& api) {
    const std::string& ignored = api.backend.remote_only.edge_ignored;
    if (!ignored.empty() && tier.config.placement == backend::Placement::kDevice) {
      out.set_header("x-foreshore-ignored-params", ignored);
    }
  }

  // Routing hints travel in x-foreshore-* headers; one that is not valid
  // UTF-8, holds control characters or is given twice is the client's error,
  // said so. Taking one of two values would let a proxy's header silently
  // loosen the client's own data class.
  static std::optional<ApiError> check_hint_headers(const HttpRequest& req) {
    const auto is_hint = [](const std::string& name) {
      return name.size() >= 12 && strncasecmp(name.c_str(), "x-foreshore-", 12) == 0;
    };
    for (size_t i = 0; i < req.headers.size(); ++i) {
      const auto& [name, value] = req.headers[i];
      if (!is_hint(name)) continue;
      const bool control = std::any_of(value.begin(), value.end(), [](char c) {
        return static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
      });
      if (control || !is_valid_utf8(value)) {
        return invalid_request(
            "The header " + name + " is not valid UTF-8 text; send the value as plain text", name,
            "invalid_header");
      }
      for (size_t j = i + 1; j < req.headers.size(); ++j) {
        if (strcasecmp(req.headers[j].first.c_str(), name.c_str()) == 0) {
          return invalid_request(
              "The header " + name + " is given more than once; send it once, with one value", name,
              "invalid_header");
        }
      }
    }
    return std::nullopt;
  }

  // Routing hints from headers, falling back to the body's metadata and user.
  static hybrid::RouteHints route_hints(const HttpRequest& req, const hybrid::Request& api) {
    hybrid::RouteHints hints;
    hints.data_class = req.header("x-foreshore-data-class");
    hints.body_data_class = api.data_class;
    hints.latency_budget_ms = req.header("x-foreshore-latency-budget-ms");
    hints.cost_ceiling_usd = req.header("x-foreshore-cost-ceiling-usd");
    hints.session = req.header("x-foreshore-session");
    if (hints.session.empty()) hints.session = api.user;
    hints.client = hybrid::client_identity(req.authorization());
    return hints;
  }

  // Reads the body whatever its Content-Type: through the reader, httplib
  // applies neither its 8 KiB cap on form bodies nor, for chunked bodies, any
  // limit at all; server.max_body_bytes is the one limit.
  std::optional<ApiError> read_body(const httplib::ContentReader& reader,
                                    const httplib::Response& res, std::string& body) const {
    const size_t limit = config.server.max_body_bytes;
    bool too_large = false;
    const bool read_ok = reader([&](const char* data, size_t n) {
      if (body.size() + n > limit) {
        too_large = true;
        return false;
      }
      body.append(data, n);
      return true;
    });
    if (too_large || res.status == 413) {
      ApiError e = invalid_request("The request body is larger than server.max_body_bytes (" +
                                       std::to_string(limit) + " bytes)",
                                   {}, "request_too_large");
      e.status = 413;
      return e;
    }
    if (!read_ok) return invalid_request("The request body could not be read");
    return std::nullopt;
  }

  // POST /v1/route: the decision for a chat request, explained, without running it.
  HttpReply route(const HttpRequest& req) {
    ActiveRequest active_request(active);
    if (req.body_error) {
      HttpReply out = error_reply(*req.body_error);
      out.set_header("Connection", "close");
      return out;
    }
    auto dep = deployment();
    if (auto e = authenticate(dep.get(), req)) return error_reply(*e);
    if (draining.load()) return error_reply(shutting_down());
    if (!dep) return error_reply(not_ready());
    std::string explained;
    if (auto e = explain_route(*dep, req, explained)) return error_reply(*e);
    return json_reply(std::move(explained));
  }

  // The decision for a chat request, explained and not run: the body POST
  // /v1/route answers with, or its error. `foreshore route --explain` calls
  // it too, so the offline explanation is the server's, byte for byte.
  static std::optional<ApiError> explain_route(const Deployment& dep, const HttpRequest& req,
                                               std::string& out) {
    if (auto e = check_hint_headers(req)) return e;
    hybrid::Request api;
    if (auto e = parse_request(hybrid::RequestKind::kChat, req.body, api)) return e;
    hybrid::Refusal refusal;
    auto explained = dep.core->explain_route(api, route_hints(req, api),
                                             req.header("x-foreshore-tier"), refusal);
    if (!explained.ok()) return api_error(refusal);
    out = std::move(explained).value();
    return std::nullopt;
  }

  static std::string_view or_unknown(const std::string& s) {
    return s.empty() ? std::string_view("unknown") : std::string_view(s);
  }

  // The streamed reply: the plan runs on a producer thread into a StreamState
  // (stream.h), and the reply's body drains it. `dep` keeps the tiers alive
  // for the stream; `until_done` counts it as active until the stream has
  // ended, however it ends.
  HttpReply stream(HttpReply out, std::shared_ptr<Deployment> dep, ActiveRequest until_done,
                   hybrid::RequestKind kind, Tier& tier, hybrid::Request api,
                   hybrid::RouteHints hints, route::Decision decision, std::string id,
                   Clock::time_point start) {
    auto st = std::make_shared<StreamState>();
    const hybrid::StreamOrigin origin = dep->core->origin(tier.config.name);
    st->api = api;
    st->created = std::time(nullptr);
    st->plan = std::string(route::to_string(decision.plan.kind));
    st->tier = origin.tier;
    st->placement = origin.placement;
    st->model = origin.model;
    st->model_version = origin.model_version;
    st->decision_id = id;
    st->writer.emplace(api, id, st->created, origin.model);
    st->request = api.backend;
    const auto deadline = *st->request.deadline;
    // `dep` keeps the tiers alive for a producer abandoned at its deadline.
    st->producer = std::thread([st, dep, decision, first_tier = origin.tier] {
      dep->core->stream(decision, first_tier, st->request, *st);
    });
    {
      std::lock_guard streams_lock(streams_mu);
      std::erase_if(streams, [](const std::weak_ptr<StreamState>& w) { return w.expired(); });
      streams.push_back(st);
    }

    std::unique_lock lock(st->mu);
    // The tier enforces the deadline itself; the grace period only guards
    // against one that does not, so no request hangs forever.
    const bool began = st->cv.wait_until(lock, deadline + std::chrono::seconds(2),
                                         [&] { return st->started || st->finished; });
    // Named now that the first event says which tier answers (or the tier
    // that failed, as a non-streamed error names it).
    name_origin(out, st->tier, st->model, st->model_version);
    if (!began || (!st->started && st->error)) {
      ApiError e;
      if (began) {
        e = from_backend_error(*st->error);
      } else {
        e.status = 504;
        e.type = "timeout_error";
        e.code = "deadline_exceeded";
        e.message = "tier '" + tier.config.name + "' produced nothing within " +
                    std::to_string(dep->config().server.request_timeout_ms) + " ms";
        st->request.cancelled->store(true);
      }
      lock.unlock();
      if (began) {
        st->producer.join();
      } else {
        st->producer.detach();
      }
      in_flight.fetch_sub(1, std::memory_order_acq_rel);
      out = refuse(std::move(out), dep->config().server, &tier, kind, start, id, e);
      dep->pipeline().finish(
          api, hints, decision,
          Result<exec::ExecutionResult>(make_error(ErrorKind::kUnavailable, e.message)),
          ms_since(start), e.status);
      return out;
    }
    set_ignored_params(out, *dep->find_tier(st->tier), st->api);
    lock.unlock();

    out.set_header("Cache-Control", "no-cache");
    // `st` owns this function, so it holds the state by plain pointer.
    st->on_settle = [this, s = st.get(), t = &tier, dep, kind, start, id = std::move(id),
                     api = std::move(api), hints = std::move(hints),
                     decision = std::move(decision)](bool success) {
      in_flight.fetch_sub(1, std::memory_order_acq_rel);
      int status = 200;
      if (!success) {
        status = 499;
      } else if (s->stream_error) {
        status = s->stream_error->status;
      }
      record(dep->config().server, t, kind, status, start, s->error ? nullptr : &s->completion, id,
             s->outcome ? &*s->outcome : nullptr, s->plan);
      const Result<exec::ExecutionResult> outcome =
          s->outcome ? Result<exec::ExecutionResult>(*s->outcome)
                     : Result<exec::ExecutionResult>(s->error.value_or(
                           make_error(ErrorKind::kCancelled, "the client went away")));
      dep->pipeline().finish(api, hints, decision, outcome, ms_since(start), status);
    };
    out.content_type = "text/event-stream";
    out.stream = std::make_shared<StreamedBody>();
    out.stream->next = [st](std::string& piece) {
      std::unique_lock l(st->mu);
      st->cv.wait_for(l, std::chrono::milliseconds(250),
                      [&] { return !st->pending.empty() || st->finished; });
      piece.swap(st->pending);
      return !st->finished;
    };
    // The slot is given back and the request counted before the stream's
    // last byte, so a client that reads the end finds both done. Drain waits
    // for `done`, so it is let go only once the socket is.
    out.stream->close =
        [st, done = std::make_shared<ActiveRequest>(std::move(until_done))](bool whole) {
          if (!whole) st->request.cancelled->store(true);
          if (st->producer.joinable()) st->producer.join();
          st->settle(whole);
        };
    return out;
  }

  // Builds everything `cfg` defines (hybrid::Deployment::create says how
  // tiers are kept over a reload) and the gateway's series for each tier.
  Result<std::shared_ptr<Deployment>> build_deployment(config::GatewayConfig cfg,
                                                       const hybrid::BackendFactory& factory,
                                                       const Deployment* previous, bool starting) {
    auto dep = std::make_shared<Deployment>();
    FSH_ASSIGN_OR_RETURN(
        dep->core, hybrid::Deployment::create(std::move(cfg), factory,
                                              previous ? previous->core.get() : nullptr, starting,
                                              metrics, egress));
    for (const hybrid::Tier& core_tier : dep->core->tiers()) {
      Tier t;
      t.config = core_tier.config;
      t.backend = core_tier.backend;
      const std::string& n = t.config.name;
      const std::vector<std::string> names = {"tier", "endpoint", "status"};
      t.ok_chat =
          &metrics.counter("foreshore_requests_total", kRequestsHelp, names, {n, "chat", "200"});
      t.ok_completions = &metrics.counter("foreshore_requests_total", kRequestsHelp, names,
                                          {n, "completions", "200"});
      const char* tokens_help = "Tokens processed, by tier and type (prompt or completion).";
      t.prompt_tokens =
          &metrics.counter("foreshore_tokens_total", tokens_help, {"tier", "type"}, {n, "prompt"});
      t.completion_tokens = &metrics.counter("foreshore_tokens_total", tokens_help,
                                             {"tier", "type"}, {n, "completion"});
      t.latency = &metrics.histogram("foreshore_request_duration_seconds",
                                     "Time from request to last byte, by tier.", {"tier"}, {n});
      t.ttft = &metrics.histogram("foreshore_time_to_first_token_seconds",
                                  "Time to the first generated token, as the tier measured it.",
                                  {"tier"}, {n});
      const backend::BackendInfo& info = t.backend->info();
      metrics
          .gauge("foreshore_tier_info", "Configured tiers (value 1), with what they serve.",
                 {"tier", "kind", "placement", "model", "model_version"},
                 {n, std::string(backend::kind_name(t.config.kind())),
                  std::string(backend::placement_name(t.config.placement)), info.model,
                  info.model_version})
          .set(1);
      dep->tiers.push_back(std::move(t));
    }
    dep->models_json = render_models(*dep->core, started_at, dep->model_json);
    return dep;
  }

  Status load_tiers(const hybrid::BackendFactory& factory) {
    FSH_ASSIGN_OR_RETURN(std::shared_ptr<Deployment> dep,
                         build_deployment(config, factory, nullptr, true));
    install(std::move(dep));
    ready.store(true, std::memory_order_release);
    return Status::Ok();
  }

  Status reload(config::GatewayConfig next, const hybrid::BackendFactory& factory) {
    std::vector<std::string> ignored;
    const config::ServerConfig& a = config.server;
    const config::ServerConfig& b = next.server;
    if (a.host != b.host) ignored.push_back("server.host");
    if (a.port != b.port && b.port != 0) ignored.push_back("server.port");
    if (a.max_body_bytes != b.max_body_bytes) ignored.push_back("server.max_body_bytes");
    if (a.worker_threads != b.worker_threads) ignored.push_back("server.worker_threads");
    if (a.worker_idle_timeout_ms != b.worker_idle_timeout_ms) {
      ignored.push_back("server.worker_idle_timeout_ms");
    }
    auto current = deployment();
    auto dep = build_deployment(std::move(next), factory, current.get(), false);
    if (!dep.ok()) {
      reloads_failed->add();
      return dep.error();
    }
    for (const auto& key : ignored) {
      std::fprintf(stderr, "config reload: %s changed but takes effect only after a restart\n",
                   key.c_str());
    }
    install(std::move(dep).value());
    reloads_ok->add();
    return Status::Ok();
  }

  void install(std::shared_ptr<Deployment> dep) {
    std::shared_ptr<Deployment> old;
    {
      std::lock_guard lock(live_mu);
      old = std::exchange(live, std::move(dep));
    }
    // `old` is released here or by the last request still using it.
  }
};

Gateway::Gateway(config::GatewayConfig config) : impl_(std::make_unique<Impl>(std::move(config))) {}

Gateway::~Gateway() {
  stop();
}

Result<int> Gateway::bind() {
  const config::ServerConfig& s = impl_->config.server;
  int port = s.port;
  if (port == 0) {
    port = impl_->http.bind_to_any_port(s.host);
    if (port < 0) port = 0;
  } else if (!impl_->http.bind_to_port(s.host, port)) {
    port = 0;
  }
  if (port == 0) {
    return make_error(ErrorKind::kUnavailable,
                      "cannot listen on " + s.host + ":" + std::to_string(s.port) +
                          " (address in use, or not an address of this machine); pick "
                          "another with --port, or --port 0 for any free one");
  }
  // httplib listens with a backlog of 5: a burst of new connections would
  // overflow it, and each dropped handshake costs its client a 1 s SYN
  // retransmit. Listening again on the bound socket raises the backlog.
  if (::listen(impl_->listen_socket, SOMAXCONN) != 0) {
    return make_error(ErrorKind::kUnavailable, "cannot raise the listen backlog on " + s.host +
                                                   ":" + std::to_string(port) + ": " +
                                                   std::strerror(errno));
  }
  return port;
}

Status Gateway::load_tiers(const hybrid::BackendFactory& factory) {
  return impl_->load_tiers(factory);
}

Status Gateway::reload(Result<config::GatewayConfig> config,
                       const hybrid::BackendFactory& factory) {
  if (!config.ok()) {
    impl_->reloads_failed->add();
    return config.error();
  }
  if (!ready()) {
    return make_error(ErrorKind::kUnavailable,
                      "the gateway is still loading its first configuration; reload after it is "
                      "ready");
  }
  return impl_->reload(std::move(config).value(), factory);
}

void Gateway::begin_drain() {
  impl_->draining.store(true, std::memory_order_seq_cst);
}

int32_t Gateway::end_streams(const std::string& why) {
  std::vector<std::shared_ptr<StreamState>> live;
  {
    std::lock_guard lock(impl_->streams_mu);
    for (const auto& w : impl_->streams) {
      if (auto s = w.lock()) live.push_back(std::move(s));
    }
  }
  ApiError e;
  e.status = 503;
  e.type = "service_unavailable";
  e.code = "shutting_down";
  e.message = why;
  int32_t ended = 0;
  for (const auto& s : live) ended += s->end(e) ? 1 : 0;
  return ended;
}

int32_t Gateway::active_requests() const {
  return impl_->active.load(std::memory_order_seq_cst);
}

void Gateway::run() {
  impl_->run_started.store(true);
  if (!impl_->stopping.load()) impl_->http.listen_after_bind();
  impl_->run_finished.store(true);
}

void Gateway::stop() {
  impl_->stopping.store(true);
  if (!impl_->run_started.load()) return;
  // httplib ignores stop() until its accept loop is running.
  while (!impl_->http.is_running() && !impl_->run_finished.load()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  impl_->http.stop();
}

Result<std::string> Gateway::explain_route(
    const std::string& body,
    const std::vector<std::pair<std::string, std::string>>& headers) const {
  auto dep = impl_->deployment();
  if (!dep) {
    return make_error(ErrorKind::kUnavailable,
                      "the gateway has no tiers loaded; call load_tiers() before explain_route()");
  }
  HttpRequest req;
  req.method = "POST";
  req.headers = headers;
  req.body = body;
  std::string out;
  if (auto e = Impl::explain_route(*dep, req, out)) {
    const ErrorKind kind = e->status == 404  ? ErrorKind::kNotFound
                           : e->status < 500 ? ErrorKind::kInvalidArgument
                                             : ErrorKind::kUnavailable;
    return make_error(kind, "HTTP " + std::to_string(e->status) +
                                (e->code.empty() ? "" : " " + e->code) + ": " + e->message);
  }
  return out;
}

bool Gateway::ready() const {
  return impl_->ready.load(std::memory_order_acquire);
}
const config::GatewayConfig& Gateway::config() const {
  return impl_->config;
}
observe::MetricsRegistry& Gateway::metrics() {
  return impl_->metrics;
}

}  // namespace foreshore::serve
