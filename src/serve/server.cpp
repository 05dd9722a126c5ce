#include "serve/server.h"

#include <httplib.h>
#include <malloc.h>
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
#include <deque>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "common/json_limits.h"
#include "engine/kernels.h"
#include "serve/hybrid.h"
#include "serve/openai.h"

namespace foreshore::serve {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kJson = "application/json";
// The model name that leaves the choice of tier to the gateway (the default
// tier until the router decides per request).
constexpr const char* kRoutedModel = "foreshore";

const char* placement_name(backend::Placement p) {
  return p == backend::Placement::kCloud ? "cloud" : "device";
}

// One line of printable text, as a header value must be; long reasons are cut.
std::string header_safe(std::string_view text) {
  std::string out;
  for (char c : text.substr(0, 240)) out += static_cast<unsigned char>(c) < 0x20 ? ' ' : c;
  return out;
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

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

struct Tier {
  backend::TierConfig config;
  std::shared_ptr<backend::Backend> backend;
  // Series looked up once so the request path only does atomic adds.
  Counter* ok_chat = nullptr;
  Counter* ok_completions = nullptr;
  Counter* prompt_tokens = nullptr;
  Counter* completion_tokens = nullptr;
  Histogram* latency = nullptr;
  Histogram* ttft = nullptr;
};

// One streamed generation: a producer thread runs the tier and appends SSE
// text; the HTTP worker drains it into the socket. The split lets the handler
// answer with a real status when the tier fails before its first token.
struct StreamState {
  std::mutex mu;
  std::condition_variable cv;
  std::string pending;
  bool started = false;
  bool finished = false;
  std::optional<Error> error;
  std::optional<ApiError> stream_error;  // sent mid-stream as an SSE error event
  bool ended_early = false;              // end() closed it; the producer adds nothing more
  backend::Completion completion;

  // Owned copies: a producer abandoned at its deadline may outlive the request.
  std::function<Result<exec::ExecutionResult>(const backend::BackendRequest&,
                                              const backend::DeltaSink&, const exec::SourceSink&)>
      run;
  std::function<std::string(std::string_view)> placement_of;
  // The model and version a tier serves, for a stream that a fallback answers.
  std::function<std::pair<std::string, std::string>(std::string_view)> model_of;
  ApiRequest api;  // to rebuild the writer for another tier's model
  std::optional<exec::ExecutionResult> outcome;
  backend::BackendRequest request;
  std::string tier, placement, model, model_version, decision_id, plan;
  std::optional<SseWriter> writer;
  std::thread producer;

  Provenance provenance(std::string_view version) const {
    Provenance p;
    p.tier = tier;
    p.placement = placement;
    p.model = model;
    p.model_version = version;
    p.decision_id = decision_id;
    p.plan = plan;
    if (outcome) {
      p.degraded = outcome->degraded;
      p.degraded_reason = outcome->degraded_reason;
      p.escalated = outcome->escalated;
      p.confidence = outcome->confidence;
    }
    return p;
  }

  // Gives back the request's admission slot and records how it ended, once:
  // when its last byte is about to go out, or when the response is torn down
  // early. Doing it before the last byte means a client that reads the end of
  // the stream finds its slot free and its request counted.
  std::function<void(bool success)> on_settle;
  std::atomic<bool> settled{false};
  void settle(bool success) {
    if (!settled.exchange(true, std::memory_order_acq_rel)) on_settle(success);
  }

  // The tier about to produce the next delta: until the stream has begun,
  // headers and chunks follow it, so they name who really answers.
  void on_source(const std::string& source) {
    std::lock_guard lock(mu);
    if (started || source == tier) return;
    tier = source;
    placement = placement_of(source);
    std::tie(model, model_version) = model_of(source);
    writer.emplace(api, decision_id, created, model);
  }

  int64_t created = 0;

  // Closes a running stream with an error event (shutdown): what the client
  // has is marked incomplete, not silently cut. False when it had not begun
  // or had already finished.
  bool end(const ApiError& why) {
    {
      std::lock_guard lock(mu);
      if (!started || finished) return false;
      stream_error = why;
      SseWriter::error(pending, why);
      finished = true;
      ended_early = true;
    }
    request.cancelled->store(true);
    cv.notify_all();
    return true;
  }

  void produce() {
    auto r = run(
        request,
        [this](const backend::Delta& d) {
          if (request.cancelled->load(std::memory_order_relaxed)) return false;
          {
            std::lock_guard lock(mu);
            if (ended_early) return false;
            if (!started) {
              started = true;
              writer->begin(pending, provenance(model_version));
            }
            writer->delta(pending, d);
          }
          cv.notify_one();
          return true;
        },
        [this](const std::string& source) { on_source(source); });
    {
      std::lock_guard lock(mu);
      if (ended_early) {
        if (r.ok()) outcome = std::move(r).value();
      } else if (r.ok()) {
        tier = r->tier;
        placement = placement_of(tier);
        if (!r->completion.model.empty()) model = r->completion.model;
        completion = r->completion;
        outcome = std::move(r).value();
        if (!started) writer->begin(pending, provenance(model_version));
        const std::string& version =
            completion.model_version.empty() ? model_version : completion.model_version;
        writer->finish(pending, completion, provenance(version));
      } else {
        error = r.error();
        if (started) {
          stream_error = from_backend_error(*error);
          SseWriter::error(pending, *stream_error);
        }
      }
      finished = true;
    }
    cv.notify_one();
  }
};

// Threads an idle gateway keeps: enough for health checks and a few clients.
constexpr size_t kMinWorkerThreads = 8;

// httplib's own pool starts every thread up front; this one starts them as
// connections arrive, so an idle gateway stays small while a busy one can
// still hold many keep-alive connections (httplib serves each on one thread).
// After a burst, threads beyond `min_threads` that stay idle for `idle_timeout`
// exit, and the last one to go hands the freed heap back to the system: a
// burst of 512 connections otherwise leaves 512 threads' stacks and malloc
// arenas resident for the life of the process.
class ElasticPool : public httplib::TaskQueue {
 public:
  ElasticPool(size_t max_threads, size_t min_threads, std::chrono::milliseconds idle_timeout,
              Gauge* workers)
      : max_threads_(max_threads),
        min_threads_(std::min(min_threads, max_threads)),
        idle_timeout_(idle_timeout),
        workers_(workers) {}

  void enqueue(std::function<void()> fn) override {
    {
      std::lock_guard lock(mu_);
      jobs_.push_back(std::move(fn));
      if (jobs_.size() > idle_ && threads_.size() < max_threads_) {
        threads_.emplace_back([this] { work(); });
        workers_->set(static_cast<double>(threads_.size()));
        return;
      }
    }
    cv_.notify_one();
  }

  void shutdown() override {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    // Once stopping_ is set no thread retires, so threads_ changes no more.
    for (auto& t : threads_) t.join();
    std::lock_guard lock(mu_);
    if (retired_.joinable()) retired_.join();
  }

 private:
  void work() {
    std::unique_lock lock(mu_);
    while (true) {
      ++idle_;
      const bool woken =
          cv_.wait_for(lock, idle_timeout_, [&] { return stopping_ || !jobs_.empty(); });
      --idle_;
      if (!woken) {
        if (threads_.size() > min_threads_) return retire(lock);
        continue;
      }
      if (jobs_.empty()) return;  // stopping, and nothing left to run
      std::function<void()> fn = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      fn();
      lock.lock();
    }
  }

  // Runs on the retiring thread, which cannot join itself: it parks its own
  // handle for the next one to retire (or shutdown) to join, and joins the
  // previous one's, so an exited thread's stack is freed promptly.
  void retire(std::unique_lock<std::mutex>& lock) {
    const auto self = std::find_if(threads_.begin(), threads_.end(), [](const std::thread& t) {
      return t.get_id() == std::this_thread::get_id();
    });
    std::thread previous = std::exchange(retired_, std::move(*self));
    threads_.erase(self);
    workers_->set(static_cast<double>(threads_.size()));
    const bool last = threads_.size() == min_threads_;
    lock.unlock();
    if (previous.joinable()) previous.join();
    if (last) malloc_trim(0);
  }

  const size_t max_threads_;
  const size_t min_threads_;
  const std::chrono::milliseconds idle_timeout_;
  Gauge* const workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  std::thread retired_;
  size_t idle_ = 0;
  bool stopping_ = false;
};

// Everything one configuration defines: its tiers, names and router. A reload
// builds a new one and swaps it in whole; requests keep the one they started
// with until they end, so none sees half of each.
struct Deployment {
  config::GatewayConfig config;
  std::vector<Tier> tiers;
  std::unordered_map<std::string, size_t> by_model;  // tier names, aliases, model ids
  size_t default_tier = 0;
  std::string models_json;
  // Each listed model's object, by id, for GET /v1/models/{id}.
  std::unordered_map<std::string, std::string> model_json;
  std::unique_ptr<HybridRouter> hybrid;

  Tier* find_tier(std::string_view name) {
    for (auto& t : tiers) {
      if (t.config.name == name) return &t;
    }
    return &tiers[default_tier];
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
  MetricsRegistry metrics;
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
  Gauge* in_flight_gauge = nullptr;
  int listen_socket = -1;  // set while httplib creates it
  Counter* reloads_ok = nullptr;
  Counter* reloads_failed = nullptr;
  // On every tier: cloud tiers check each body they send against the live
  // deployment's detectors (a reload's new rules apply at once).
  std::shared_ptr<backend::EgressGuard> egress = std::make_shared<backend::EgressGuard>();
  std::function<void(std::string_view)> log_sink;  // empty: stderr
  // The embedding app's memory-pressure level, kept over reloads (live_mu).
  std::optional<int> app_memory_level;
  // Running streams, for end_streams() at shutdown.
  std::mutex streams_mu;
  std::vector<std::weak_ptr<StreamState>> streams;

  explicit Impl(config::GatewayConfig c) : config(std::move(c)) {
    egress->set_policy([this](std::string_view tier, std::span<const std::string_view> strings,
                              const backend::EgressClearance* skipped) {
      auto dep = deployment();
      if (!dep || !dep->hybrid) return std::string("no configuration is loaded yet");
      return dep->hybrid->egress_verdict(tier, strings, skipped);
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
    Gauge* worker_gauge = &metrics.gauge(
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

    http.Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("{\"status\":\"ok\"}", kJson);
    });
    http.Get("/readyz", [this](const httplib::Request&, httplib::Response& res) {
      if (draining.load()) {
        res.status = 503;
        res.set_content("{\"status\":\"draining\"}", kJson);
        return;
      }
      auto dep = deployment();
      if (!dep) {
        res.status = 503;
        res.set_content("{\"status\":\"loading\"}", kJson);
        return;
      }
      // Each tier's state, so that "ready" never hides a cloud that cannot
      // be reached: the gateway serves (200) but says it is degraded.
      std::string names, unavailable, states;
      bool all_ok = true;
      for (size_t i = 0; i < dep->tiers.size(); ++i) {
        const Tier& t = dep->tiers[i];
        if (i > 0) names += ',', states += ',';
        append_json_string(names, t.config.name);
        const std::string why = t.backend->unavailable_reason();
        const std::string_view breaker = dep->hybrid->breaker_state(t.config.name);
        append_json_string(states, t.config.name);
        states += ":{\"placement\":";
        append_json_string(states, placement_name(t.config.placement));
        states += ",\"breaker\":";
        append_json_string(states, breaker);
        states += ",\"state\":";
        append_json_string(states, !why.empty()          ? "unavailable"
                                   : breaker == "closed" ? "ok"
                                                         : "failing");
        states += '}';
        all_ok = all_ok && why.empty() && breaker == "closed";
        if (!why.empty()) {
          unavailable += unavailable.empty() ? "" : ",";
          append_json_string(unavailable, t.config.name);
          unavailable += ':';
          append_json_string(unavailable, why);
        }
      }
      // A replica on its own state (Redis down) serves but enforces limits alone.
      const state::SharedState& shared = dep->hybrid->shared_state();
      all_ok = all_ok && shared.connected();
      std::string body = std::string("{\"status\":") + (all_ok ? "\"ready\"" : "\"degraded\"") +
                         ",\"tiers\":[" + names + "],\"tier_states\":{" + states + "}";
      body += ",\"state\":{\"backend\":";
      append_json_string(body, shared.backend());
      body += std::string(",\"connected\":") + (shared.connected() ? "true" : "false") + "}";
      if (!unavailable.empty()) body += ",\"unavailable\":{" + unavailable + "}";
      body += "}";
      res.set_content(body, kJson);
    });
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      in_flight_gauge->set(in_flight.load(std::memory_order_relaxed));
      if (auto dep = deployment()) dep->hybrid->collect_metrics();
      res.set_content(metrics.render(), "text/plain; version=0.0.4; charset=utf-8");
    });
    http.Post("/admin/keys", [this](const httplib::Request& req, httplib::Response& res) {
      handle_admin_keys(req, res);
    });
    http.Delete(R"(/admin/keys/([0-9a-f]+))",
                [this](const httplib::Request& req, httplib::Response& res) {
                  handle_admin_keys(req, res);
                });
    http.Get("/v1/models", [this](const httplib::Request& req, httplib::Response& res) {
      auto dep = deployment();
      if (!check_auth(dep ? dep->config.server : config.server, req, res)) return;
      if (!dep) {
        send_error(res, not_ready());
        return;
      }
      res.set_content(dep->models_json, kJson);
    });
    // Model ids may hold slashes ("foreshore/cascade", "org/name").
    http.Get(R"(/v1/models/(.+))", [this](const httplib::Request& req, httplib::Response& res) {
      auto dep = deployment();
      if (!check_auth(dep ? dep->config.server : config.server, req, res)) return;
      if (!dep) {
        send_error(res, not_ready());
        return;
      }
      const std::string id = req.matches[1];
      auto it = dep->model_json.find(id);
      if (it == dep->model_json.end()) {
        ApiError e = invalid_request(
            "The model '" + id + "' does not exist here; GET /v1/models lists those that do",
            "model", "model_not_found");
        e.status = 404;
        send_error(res, e);
        return;
      }
      res.set_content(it->second, kJson);
    });
    http.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res,
                                             const httplib::ContentReader& reader) {
      handle_generate(ApiKind::kChat, req, res, reader);
    });
    http.Post("/v1/route",
              [this](const httplib::Request& req, httplib::Response& res,
                     const httplib::ContentReader& reader) { handle_route(req, res, reader); });
    http.Post("/v1/feedback", [this](const httplib::Request& req, httplib::Response& res) {
      handle_feedback(req, res);
    });
    http.Get("/v1/router/status", [this](const httplib::Request& req, httplib::Response& res) {
      handle_router_status(req, res);
    });
    http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res,
                                        const httplib::ContentReader& reader) {
      handle_generate(ApiKind::kCompletion, req, res, reader);
    });

    // Whatever httplib answers by itself (unknown path, oversized or
    // malformed request) still gets OpenAI's error shape.
    http.set_error_handler(httplib::Server::HandlerWithResponse(
        [](const httplib::Request& req, httplib::Response& res) {
          if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
          ApiError e;
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

  std::shared_ptr<Deployment> deployment() const {
    std::lock_guard lock(live_mu);
    return live;
  }

  static ApiError shutting_down() {
    ApiError e;
    e.status = 503;
    e.type = "service_unavailable";
    e.code = "shutting_down";
    e.message =
        "The gateway is shutting down and takes no new requests; retry on another instance "
        "or after it restarts";
    e.retry_after_seconds = 1;
    return e;
  }

  static ApiError not_ready() {
    ApiError e;
    e.status = 503;
    e.type = "service_unavailable";
    e.code = "not_ready";
    e.message = "The gateway is still loading its tiers; retry shortly (GET /readyz tells when)";
    return e;
  }

  static void send_error(httplib::Response& res, const ApiError& e) {
    res.status = e.status;
    if (e.retry_after_seconds > 0) {
      res.set_header("Retry-After",
                     std::to_string(static_cast<int64_t>(std::ceil(e.retry_after_seconds))));
    }
    res.body = error_json(e);
    res.set_header("Content-Type", kJson);
  }

  static bool check_auth(const config::ServerConfig& server, const httplib::Request& req,
                         httplib::Response& res) {
    const auto& keys = server.api_keys;
    if (keys.empty()) return true;
    std::string_view auth = header_value(req, "Authorization");
    ApiError e;
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

  static std::string_view bearer_key(const httplib::Request& req) {
    std::string_view auth = header_value(req, "Authorization");
    return auth.starts_with("Bearer ") ? auth.substr(7) : std::string_view();
  }

  // POST /admin/keys and DELETE /admin/keys/ID, for server.admin_key_env's key.
  void handle_admin_keys(const httplib::Request& req, httplib::Response& res) {
    auto dep = deployment();
    const config::ServerConfig& server = dep ? dep->config.server : config.server;
    ApiError e;
    e.status = 401;
    e.code = "invalid_admin_key";
    if (server.admin_key.empty()) {
      e.status = 404;
      e.code = "admin_disabled";
      e.message = "The admin API is off; set server.admin_key_env to turn it on";
    } else if (!constant_time_equal(bearer_key(req), server.admin_key)) {
      e.message = "The admin API needs 'Authorization: Bearer ADMIN_KEY' (server.admin_key_env)";
    } else if (!dep) {
      e = not_ready();
    } else {
      state::SharedState& state = dep->hybrid->shared_state();
      if (req.method == "DELETE") {
        const std::string key_id = req.matches[1];
        if (auto s = revoke_virtual_key(state, key_id); !s.ok()) {
          e = from_backend_error(s.error());
          e.status = s.error().kind == ErrorKind::kNotFound ? 404 : 503;
        } else {
          res.set_content("{\"revoked\":" + nlohmann::json(key_id).dump() + "}", kJson);
          return;
        }
      } else {
        auto spec = virtual_key_from_json(req.body);
        const auto body = nlohmann::json::parse(req.body, nullptr, false);
        if (spec.ok() && body.is_object() && body.contains("expires_in_seconds") &&
            body["expires_in_seconds"].is_number_integer()) {
          spec->expires_at = std::time(nullptr) + body["expires_in_seconds"].get<int64_t>();
        }
        if (!spec.ok()) {
          e = invalid_request(spec.error().message, "", "invalid_virtual_key");
        } else if (auto secret = create_virtual_key(state, *spec); !secret.ok()) {
          e = from_backend_error(secret.error());
          e.status = 503;
        } else {
          auto out = nlohmann::json::parse(virtual_key_json(*spec));
          out["key"] = *secret;
          res.status = 201;
          res.set_content(out.dump(), kJson);
          return;
        }
      }
    }
    send_error(res, e);
  }

  // The tier that serves a request, or the error that says why none does.
  static std::optional<ApiError> select_tier(const Deployment& dep, const httplib::Request& req,
                                             const ApiRequest& api, size_t& out) {
    const auto& tiers = dep.tiers;
    if (std::string_view forced = header_value(req, "x-foreshore-tier"); !forced.empty()) {
      for (size_t i = 0; i < tiers.size(); ++i) {
        if (tiers[i].config.name == forced) {
          out = i;
          return std::nullopt;
        }
      }
      std::string names;
      for (const auto& t : tiers) names += (names.empty() ? "" : ", ") + t.config.name;
      return invalid_request("x-foreshore-tier: '" + std::string(forced) +
                                 "' is not a tier of this gateway (tiers: " + names + ")",
                             "x-foreshore-tier", "unknown_tier");
    }
    if (api.model.empty()) {
      out = dep.default_tier;
      return std::nullopt;
    }
    auto it = dep.by_model.find(api.model);
    if (it == dep.by_model.end() && api.model == kRoutedModel) {
      out = dep.default_tier;
      return std::nullopt;
    }
    if (it == dep.by_model.end()) {
      ApiError e = invalid_request("The model '" + api.model +
                                       "' does not exist on this gateway; GET /v1/models "
                                       "lists the names it serves",
                                   "model", "model_not_found");
      e.status = 404;
      return e;
    }
    out = it->second;
    return std::nullopt;
  }

  // `server`: the configuration the request ran under (it says whether to log).
  // `outcome`: how a routed request ran, named in the log line (plan, degradation).
  void record(const config::ServerConfig& server, const Tier* tier, ApiKind kind, int status,
              Clock::time_point start, const backend::Completion* completion, std::string_view id,
              const exec::ExecutionResult* outcome = nullptr, std::string_view plan = {}) {
    const double ms = ms_since(start);
    const char* endpoint = kind == ApiKind::kChat ? "chat" : "completions";
    if (tier != nullptr && status == 200) {
      (kind == ApiKind::kChat ? tier->ok_chat : tier->ok_completions)->add();
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
      std::string extra;
      if (!plan.empty()) extra += " plan=" + std::string(plan);
      if (outcome != nullptr && outcome->degraded) {
        extra += " degraded=\"" + outcome->degraded_reason + "\"";
      }
      char line[512];
      std::snprintf(line, sizeof line, "req %.*s %s tier=%s status=%d %.1fms%s",
                    static_cast<int>(id.size()), id.data(), endpoint,
                    tier ? tier->config.name.c_str() : "-", status, ms, extra.c_str());
      if (log_sink) {
        log_sink(line);
      } else {
        std::fprintf(stderr, "%s\n", line);
      }
    }
  }

  static constexpr const char* kRequestsHelp =
      "Generation requests by tier, endpoint and outcome status (the HTTP status; for "
      "streams that failed after starting, the error's status; 499: the client went away).";

  void handle_generate(ApiKind kind, const httplib::Request& req, httplib::Response& res,
                       const httplib::ContentReader& reader) {
    const auto start = Clock::now();
    ActiveRequest active_request(active);
    std::string id = new_id();
    res.set_header("x-foreshore-decision-id", id);
    // The configuration this request runs under, even if a reload happens meanwhile.
    std::shared_ptr<Deployment> dep = deployment();
    const config::ServerConfig& server = dep ? dep->config.server : config.server;
    if (draining.load()) {
      res.set_header("Connection", "close");
      send_error(res, shutting_down());
      record(server, nullptr, kind, 503, start, nullptr, id);
      return;
    }

    std::string body;
    if (auto e = read_body(reader, res, body)) {
      res.set_header("Connection", "close");
      send_error(res, *e);
      record(server, nullptr, kind, e->status, start, nullptr, id);
      return;
    }
    // A virtual key (virtual_keys.h) is looked up in the shared state; any
    // other key must be one of server.api_keys.
    std::optional<VirtualKey> virtual_key;
    if (dep) virtual_key = find_virtual_key(dep->hybrid->shared_state(), bearer_key(req));
    if (virtual_key && virtual_key->expires_at != 0 &&
        virtual_key->expires_at <= std::time(nullptr)) {
      ApiError e;
      e.status = 401;
      e.code = "invalid_api_key";
      e.message = "The virtual key " + virtual_key->id + " has expired; ask for a new one";
      send_error(res, e);
      record(server, nullptr, kind, 401, start, nullptr, id);
      return;
    }
    if (!virtual_key && !check_auth(server, req, res)) {
      record(server, nullptr, kind, 401, start, nullptr, id);
      return;
    }
    generate(kind, req, body, res, start, std::move(id), std::move(dep), std::move(active_request),
             {}, std::move(virtual_key));
  }

  // Everything after the body is read and the client admitted: parse, route,
  // run, answer into `res`. With `in_process` set (Gateway::chat) the answer
  // is never streamed over HTTP: the deltas go to it while the completion is
  // built, and the whole answer is still written to `res`. `virtual_key`: the
  // client's, when it authenticated with one (its limits apply).
  void generate(ApiKind kind, const httplib::Request& req, const std::string& body,
                httplib::Response& res, Clock::time_point start, std::string id,
                std::shared_ptr<Deployment> dep, ActiveRequest active_request,
                const backend::DeltaSink& in_process,
                std::optional<VirtualKey> virtual_key = std::nullopt) {
    const config::ServerConfig& server = dep ? dep->config.server : config.server;
    if (!dep) {
      send_error(res, not_ready());
      record(server, nullptr, kind, 503, start, nullptr, id);
      return;
    }
    HybridRouter* hybrid = dep->hybrid.get();

    ApiRequest api;
    auto e = check_hint_headers(req);
    if (!e) e = parse_request(kind, body, api);
    if (e) {
      send_error(res, *e);
      record(server, nullptr, kind, e->status, start, nullptr, id);
      return;
    }
    RouteHints hints = route_hints(req, api);
    hints.virtual_key = std::move(virtual_key);
    // A tier named by header or by model is a forced tier, still subject to
    // the router's rules (device-only data never reaches a cloud tier).
    if (!header_value(req, "x-foreshore-tier").empty() ||
        !HybridRouter::is_routed_model(api.model)) {
      size_t index = 0;
      if (auto e = select_tier(*dep, req, api, index)) {
        send_error(res, *e);
        record(server, nullptr, kind, e->status, start, nullptr, id);
        return;
      }
      hints.forced_tier = dep->tiers[index].config.name;
      hints.forced_is_preference =
          header_value(req, "x-foreshore-tier").empty() && api.model != hints.forced_tier;
      if (header_value(req, "x-foreshore-tier").empty()) {
        for (const auto& alias : dep->config.models) {
          if (alias.name == api.model) hints.fallback_tiers = alias.fallback;
        }
      }
    } else if (!dep->config.routing && !server.default_tier.empty()) {
      // Without a routing: section, server.default_tier is a fixed tier.
      hints.forced_tier = server.default_tier;
    }
    ApiError route_error;
    auto decided = hybrid->decide(api, hints, route_error);
    if (!decided.ok() || decided->plan.kind == route::PlanKind::kReject) {
      send_error(res, route_error);
      record(server, nullptr, kind, route_error.status, start, nullptr, id);
      if (decided.ok()) {
        hybrid->finish(
            api, hints, *decided,
            Result<exec::ExecutionResult>(make_error(ErrorKind::kUnavailable, route_error.message)),
            ms_since(start), route_error.status);
      }
      return;
    }
    route::Decision decision = std::move(decided).value();
    decision.id = id;
    const std::string& primary = decision.plan.kind == route::PlanKind::kCloud
                                     ? decision.plan.cloud_tier
                                     : decision.plan.edge_tier;
    Tier& tier = *dep->find_tier(primary);

    // Admission after parsing, so malformed requests never take a slot.
    if (in_flight.fetch_add(1, std::memory_order_acq_rel) >= server.max_concurrent_requests) {
      in_flight.fetch_sub(1, std::memory_order_acq_rel);
      ApiError e;
      e.status = 429;
      e.type = "rate_limit_error";
      e.code = "overloaded";
      e.message = "The gateway is serving its maximum of " +
                  std::to_string(server.max_concurrent_requests) +
                  " concurrent requests; retry shortly";
      e.retry_after_seconds = 1;
      send_error(res, e);
      record(server, &tier, kind, 429, start, nullptr, id);
      return;
    }

    if (auto refused = hybrid->admit(api, decision, hints)) {
      in_flight.fetch_sub(1, std::memory_order_acq_rel);
      send_error(res, *refused);
      record(server, &tier, kind, refused->status, start, nullptr, id);
      return;
    }

    api.backend.request_id = id;
    api.backend.deadline = start + std::chrono::milliseconds(server.request_timeout_ms);
    api.backend.cancelled = std::make_shared<std::atomic<bool>>(false);
    res.set_header("x-foreshore-plan", std::string(route::to_string(decision.plan.kind)));
    res.set_header("x-foreshore-policy", std::string(route::to_string(decision.policy)));

    if (in_process) api.stream = false;
    if (api.stream) {
      stream(dep, std::move(active_request), kind, tier, std::move(api), std::move(hints),
             std::move(decision), std::move(id), start, res);
      return;
    }

    auto result = hybrid->execute(decision, api.backend, in_process);
    in_flight.fetch_sub(1, std::memory_order_acq_rel);
    if (!result.ok()) {
      const backend::BackendInfo& info = tier.backend->info();
      res.set_header("x-foreshore-tier", tier.config.name);
      res.set_header("x-foreshore-model", info.model);
      res.set_header("x-foreshore-model-version", std::string(or_unknown(info.model_version)));
      const ApiError e = from_backend_error(result.error());
      send_error(res, e);
      record(server, &tier, kind, e.status, start, nullptr, id);
      hybrid->finish(api, hints, decision, result, ms_since(start), e.status);
      return;
    }
    Tier& served = *dep->find_tier(result->tier);
    const backend::BackendInfo& info = served.backend->info();
    const backend::Completion& c = result->completion;
    const std::string& model = c.model.empty() ? info.model : c.model;
    const std::string_view version =
        or_unknown(c.model_version.empty() ? info.model_version : c.model_version);
    res.set_header("x-foreshore-tier", served.config.name);
    res.set_header("x-foreshore-model", model);
    res.set_header("x-foreshore-model-version", std::string(version));
    set_ignored_params(res, served, api);
    if (result->degraded) {
      res.set_header("x-foreshore-degraded", "true");
      res.set_header("x-foreshore-degraded-reason", header_safe(result->degraded_reason));
    }
    if (result->escalated) res.set_header("x-foreshore-escalated", "true");
    if (result->confidence) {
      res.set_header("x-foreshore-confidence", std::to_string(*result->confidence));
    }
    Provenance where;
    where.tier = served.config.name;
    where.placement = placement_name(served.config.placement);
    where.model = model;
    where.model_version = version;
    where.decision_id = id;
    where.plan = route::to_string(decision.plan.kind);
    where.degraded = result->degraded;
    where.degraded_reason = result->degraded_reason;
    where.escalated = result->escalated;
    where.confidence = result->confidence;
    append_completion(res.body, api, id, std::time(nullptr), c, where);
    res.set_header("Content-Type", kJson);
    record(server, &served, kind, 200, start, &c, id, &*result, where.plan);
    hybrid->finish(api, hints, decision, result, ms_since(start), 200);
  }

  // An answer from the edge says which of the client's fields it ignored.
  static void set_ignored_params(httplib::Response& res, const Tier& tier, const ApiRequest& api) {
    const std::string& ignored = api.backend.remote_only.edge_ignored;
    if (!ignored.empty() && tier.config.placement == backend::Placement::kDevice) {
      res.set_header("x-foreshore-ignored-params", ignored);
    }
  }

  // Routing hints from headers, falling back to the body's metadata and user.
  // Routing hints travel in x-foreshore-* headers; one that is not valid
  // UTF-8 or holds control characters is the client's error, said so.
  static std::optional<ApiError> check_hint_headers(const httplib::Request& req) {
    for (const auto& [name, value] : req.headers) {
      if (name.size() < 12 || strncasecmp(name.c_str(), "x-foreshore-", 12) != 0) continue;
      const bool control = std::any_of(value.begin(), value.end(), [](char c) {
        return static_cast<unsigned char>(c) < 0x20 || c == 0x7f;
      });
      if (control || !is_valid_utf8(value)) {
        return invalid_request(
            "The header " + name + " is not valid UTF-8 text; send the value as plain text", name,
            "invalid_header");
      }
    }
    return std::nullopt;
  }

  static RouteHints route_hints(const httplib::Request& req, const ApiRequest& api) {
    RouteHints hints;
    hints.data_class = header_value(req, "x-foreshore-data-class");
    if (hints.data_class.empty()) hints.data_class = api.data_class;
    hints.latency_budget_ms = header_value(req, "x-foreshore-latency-budget-ms");
    hints.cost_ceiling_usd = header_value(req, "x-foreshore-cost-ceiling-usd");
    hints.session = header_value(req, "x-foreshore-session");
    if (hints.session.empty()) hints.session = api.user;
    hints.client = client_identity(header_value(req, "Authorization"));
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
  void handle_route(const httplib::Request& req, httplib::Response& res,
                    const httplib::ContentReader& reader) {
    ActiveRequest active_request(active);
    std::string body;
    if (auto e = read_body(reader, res, body)) {
      res.set_header("Connection", "close");
      send_error(res, *e);
      return;
    }
    auto dep = deployment();
    if (!check_auth(dep ? dep->config.server : config.server, req, res)) return;
    if (draining.load()) {
      send_error(res, shutting_down());
      return;
    }
    if (!dep) {
      send_error(res, not_ready());
      return;
    }
    std::string explained;
    if (auto e = explain_route(*dep, req, body, explained)) {
      send_error(res, *e);
      return;
    }
    res.set_content(explained, kJson);
  }

  // POST /v1/feedback {"decision_id": ..., "score": 0..1 | "thumbs": "up"|"down"}: a
  // client's verdict on an answer, learned from on the device (serve/learning.h).
  void handle_feedback(const httplib::Request& req, httplib::Response& res) {
    auto dep = deployment();
    if (!check_auth(dep ? dep->config.server : config.server, req, res)) return;
    if (!dep) {
      send_error(res, not_ready());
      return;
    }
    RouterLearning* learning = dep->hybrid->learning();
    if (learning == nullptr) {
      ApiError e = invalid_request(
          "Router learning is off here, so feedback has nowhere to go; set "
          "routing.learning.enabled: true in the gateway config",
          {}, "learning_off");
      e.status = 404;
      send_error(res, e);
      return;
    }
    // Bounded like every client body: nothing recurses over a depth bomb.
    const auto body = json_nesting_exceeds(req.body)
                          ? nlohmann::json(nlohmann::json::value_t::discarded)
                          : nlohmann::json::parse(req.body, nullptr, false);
    if (body.is_discarded() || !body.is_object() || !body.contains("decision_id") ||
        !body["decision_id"].is_string()) {
      send_error(res, invalid_request("The body must be a JSON object with a \"decision_id\" "
                                      "string (from the answer's decision_id or "
                                      "x-foreshore-decision-id)",
                                      "decision_id"));
      return;
    }
    std::optional<double> score;
    if (body.contains("score") && body["score"].is_number()) {
      score = body["score"].get<double>();
      if (!(*score >= 0.0 && *score <= 1.0)) score.reset();
    } else if (body.contains("thumbs") && body["thumbs"].is_string()) {
      const std::string t = body["thumbs"].get<std::string>();
      if (t == "up") score = 1.0;
      if (t == "down") score = 0.0;
    }
    if (!score) {
      send_error(res, invalid_request("Give \"score\" as a number from 0 (bad answer) to 1 "
                                      "(good answer), or \"thumbs\": \"up\" or \"down\"",
                                      "score"));
      return;
    }
    const std::string id = body["decision_id"].get<std::string>();
    auto result = learning->feedback(id, *score);
    if (!result.ok()) {
      ApiError e = invalid_request(result.error().message, "decision_id", "unknown_decision");
      e.status = 404;
      send_error(res, e);
      return;
    }
    nlohmann::ordered_json out = {
        {"decision_id", id}, {"accepted", true}, {"learned", result->learned}};
    if (!result->reason.empty()) out["reason"] = result->reason;
    res.set_content(out.dump(), kJson);
  }

  // GET /v1/router/status: what the router has learned (labels per source,
  // threshold, its own APGR estimate).
  void handle_router_status(const httplib::Request& req, httplib::Response& res) {
    auto dep = deployment();
    if (!check_auth(dep ? dep->config.server : config.server, req, res)) return;
    if (!dep) {
      send_error(res, not_ready());
      return;
    }
    nlohmann::ordered_json out = {{"learning", false}};
    if (RouterLearning* learning = dep->hybrid->learning()) out = learning->status();
    const auto learner = dep->hybrid->router().learner();
    out["threshold_in_force"] = learner && learner->recalibrates()
                                    ? learner->threshold()
                                    : dep->hybrid->router().threshold();
    res.set_content(out.dump(), kJson);
  }

  // The decision for a chat request, explained and not run: the body POST
  // /v1/route answers with, or its error. `foreshore route --explain` calls
  // it too, so the offline explanation is the server's, byte for byte.
  static std::optional<ApiError> explain_route(const Deployment& dep, const httplib::Request& req,
                                               std::string_view body, std::string& out) {
    if (auto e = check_hint_headers(req)) return e;
    ApiRequest api;
    if (auto e = parse_request(ApiKind::kChat, body, api)) return e;
    RouteHints hints = route_hints(req, api);
    hints.forced_tier = header_value(req, "x-foreshore-tier");
    ApiError route_error;
    auto decided = dep.hybrid->decide(api, hints, route_error);
    if (!decided.ok()) return route_error;
    nlohmann::json j;
    route::to_json(j, *decided);
    out = j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace);
    return std::nullopt;
  }

  static std::string_view or_unknown(const std::string& s) {
    return s.empty() ? std::string_view("unknown") : std::string_view(s);
  }

  // `dep` keeps the tiers alive for the stream; `until_done` counts it as
  // active until the stream has ended, however it ends.
  void stream(std::shared_ptr<Deployment> dep, ActiveRequest until_done, ApiKind kind, Tier& tier,
              ApiRequest api, RouteHints hints, route::Decision decision, std::string id,
              Clock::time_point start, httplib::Response& res) {
    const backend::BackendInfo& info = tier.backend->info();
    auto st = std::make_shared<StreamState>();
    HybridRouter* router = dep->hybrid.get();
    st->run = [router, decision](const backend::BackendRequest& r, const backend::DeltaSink& sink,
                                 const exec::SourceSink& source) {
      return router->execute(decision, r, sink, source);
    };
    st->placement_of = [dep](std::string_view name) -> std::string {
      return placement_name(dep->find_tier(name)->config.placement);
    };
    st->model_of = [dep](std::string_view name) {
      const backend::BackendInfo& i = dep->find_tier(name)->backend->info();
      return std::make_pair(i.model, std::string(or_unknown(i.model_version)));
    };
    st->api = api;
    st->created = std::time(nullptr);
    st->plan = std::string(route::to_string(decision.plan.kind));
    st->tier = tier.config.name;
    st->placement = placement_name(tier.config.placement);
    st->model = info.model;
    st->model_version = or_unknown(info.model_version);
    st->decision_id = id;
    st->writer.emplace(api, id, st->created, info.model);
    st->request = api.backend;
    const auto deadline = *st->request.deadline;
    st->producer = std::thread([st] { st->produce(); });
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
    if (!began || (!st->started && st->error)) {
      ApiError e;
      if (began) {
        e = from_backend_error(*st->error);
      } else {
        e.status = 504;
        e.type = "timeout_error";
        e.code = "deadline_exceeded";
        e.message = "tier '" + tier.config.name + "' produced nothing within " +
                    std::to_string(dep->config.server.request_timeout_ms) + " ms";
        st->request.cancelled->store(true);
      }
      // The tier that failed, as a non-streamed error names it.
      res.set_header("x-foreshore-tier", st->tier);
      res.set_header("x-foreshore-model", st->model);
      res.set_header("x-foreshore-model-version", st->model_version);
      lock.unlock();
      if (began) {
        st->producer.join();
      } else {
        st->producer.detach();
      }
      in_flight.fetch_sub(1, std::memory_order_acq_rel);
      send_error(res, e);
      record(dep->config.server, &tier, kind, e.status, start, nullptr, id);
      router->finish(api, hints, decision,
                     Result<exec::ExecutionResult>(make_error(ErrorKind::kUnavailable, e.message)),
                     ms_since(start), e.status);
      return;
    }
    // Named now that the first delta says which tier answers.
    res.set_header("x-foreshore-tier", st->tier);
    res.set_header("x-foreshore-model", st->model);
    res.set_header("x-foreshore-model-version", st->model_version);
    set_ignored_params(res, *dep->find_tier(st->tier), st->api);
    lock.unlock();

    res.set_header("Cache-Control", "no-cache");
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
      record(dep->config.server, t, kind, status, start, s->error ? nullptr : &s->completion, id,
             s->outcome ? &*s->outcome : nullptr, s->plan);
      const Result<exec::ExecutionResult> outcome =
          s->outcome ? Result<exec::ExecutionResult>(*s->outcome)
                     : Result<exec::ExecutionResult>(s->error.value_or(
                           make_error(ErrorKind::kCancelled, "the client went away")));
      dep->hybrid->finish(api, hints, decision, outcome, ms_since(start), status);
    };
    res.set_chunked_content_provider(
        "text/event-stream",
        [st, out = std::string()](size_t, httplib::DataSink& sink) mutable {
          bool done = false;
          {
            std::unique_lock l(st->mu);
            st->cv.wait_for(l, std::chrono::milliseconds(250),
                            [&] { return !st->pending.empty() || st->finished; });
            out.clear();
            out.swap(st->pending);
            done = st->finished;
          }
          if (!out.empty() && !sink.write(out.data(), out.size())) {
            st->request.cancelled->store(true);
            return false;
          }
          if (done) {
            st->settle(true);
            sink.done();
          } else if (out.empty() && !sink.is_writable()) {
            st->request.cancelled->store(true);
            return false;
          }
          return true;
        },
        // Drain waits for `done`, so it is let go only once the socket is.
        [st, done = std::make_shared<ActiveRequest>(std::move(until_done))](bool success) {
          if (!success) st->request.cancelled->store(true);
          if (st->producer.joinable()) st->producer.join();
          st->settle(success);
        });
  }

  // Builds everything `cfg` defines. Tiers whose configuration did not change
  // keep their running backend (a loaded model is not loaded twice).
  // At start (`starting`), an embedded tier whose model fails to load is kept
  // as an unavailable tier so the others still serve; on reload such a
  // failure rejects the new configuration instead.
  Result<std::shared_ptr<Deployment>> build_deployment(config::GatewayConfig cfg,
                                                       const BackendFactory& factory,
                                                       const Deployment* previous, bool starting) {
    auto dep = std::make_shared<Deployment>();
    dep->config = std::move(cfg);
    const config::GatewayConfig& c = dep->config;
    std::vector<Tier>& loaded = dep->tiers;
    loaded.reserve(c.tiers.size());
    for (const auto& tc : c.tiers) {
      std::shared_ptr<backend::Backend> reused;
      if (previous != nullptr) {
        for (const auto& old : previous->tiers) {
          if (old.config == tc) reused = old.backend;
        }
      }
      if (!reused) {
        auto b = factory(tc);
        if (b.ok()) (*b)->set_egress_guard(egress);
        if (b.ok()) {
          reused = std::move(b).value();
        } else if (starting && tc.kind() == "embedded" && c.tiers.size() > 1) {
          std::fprintf(stderr,
                       "warning: tier '%s' is UNAVAILABLE: %s\n"
                       "  the other tiers serve; requests that may only run on it get 503\n",
                       tc.name.c_str(), b.error().message.c_str());
          reused = backend::make_unavailable_backend(tc, b.error());
        } else {
          Error e = b.error();
          e.message = c.source + ": tiers." + tc.name + ": " + e.message;
          return e;
        }
      }
      Tier t;
      t.config = tc;
      t.backend = std::move(reused);
      const std::string& n = tc.name;
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
                 {n, tc.kind(), placement_name(tc.placement), info.model, info.model_version})
          .set(1);
      loaded.push_back(std::move(t));
    }

    // Model ids first, so explicit names and aliases win over them; a model
    // id served by several tiers reaches the first (device tiers come first
    // in any sensible config).
    auto& by_model = dep->by_model;
    for (size_t i = 0; i < loaded.size(); ++i) {
      by_model.emplace(loaded[i].config.model, i);
      if (!loaded[i].backend->info().model.empty()) {
        by_model.emplace(loaded[i].backend->info().model, i);
      }
    }
    for (const auto& alias : c.models) {
      for (size_t i = 0; i < loaded.size(); ++i) {
        if (loaded[i].config.name == alias.tier) by_model[alias.name] = i;
      }
    }
    for (size_t i = 0; i < loaded.size(); ++i) by_model[loaded[i].config.name] = i;

    const std::string& wanted = c.server.default_tier;
    auto pick = std::find_if(loaded.begin(), loaded.end(), [&](const Tier& t) {
      return wanted.empty() ? t.config.placement == backend::Placement::kDevice
                            : t.config.name == wanted;
    });
    if (pick != loaded.end()) dep->default_tier = static_cast<size_t>(pick - loaded.begin());

    HybridSettings hs;
    if (auto routing = route::router_config_from_yaml(c.routing, c.source); routing.ok()) {
      hs.routing = std::move(routing).value();
    } else {
      return routing.error();
    }
    if (c.privacy) {
      auto privacy = route::sensitivity_config_from_yaml(c.privacy, c.source);
      if (!privacy.ok()) return privacy.error();
      hs.routing.privacy = std::move(privacy).value();
    }
    hs.audit_path = c.server.audit_db;
    hs.decision_log = c.server.decision_log;
    hs.audit_store_text = c.server.audit_store_text;
    hs.audit_max_rows = c.server.audit_max_rows;
    hs.audit_max_age_hours = c.server.audit_max_age_hours;
    hs.shadow_fraction = c.server.shadow_fraction;
    hs.shadow_target_agreement = c.server.shadow_target_agreement;
    hs.state = c.state;
    hs.audit_postgres = c.server.audit_postgres;
    hs.audit_spool = c.server.audit_spool;
    hs.limits = c.limits;
    hs.shadow_data_classes.clear();
    for (const auto& name : c.server.shadow_data_classes) {
      if (auto cls = route::parse_data_class(name); cls.ok())
        hs.shadow_data_classes.push_back(*cls);
    }
    hs.memory_budget_bytes = static_cast<uint64_t>(c.server.memory_budget_mb) << 20;
    hs.memory_pressure_interval_ms = c.server.memory_pressure_interval_ms;
    std::map<std::string, std::shared_ptr<backend::Backend>> backends;
    for (const auto& t : loaded) backends[t.config.name] = t.backend;
    auto h = HybridRouter::create(hs, c.tiers, std::move(backends), metrics);
    if (!h.ok()) {
      Error e = h.error();
      e.message = c.source + ": " + e.message;
      return e;
    }
    dep->hybrid = std::move(h).value();
    dep->models_json = render_models(*dep, dep->model_json);
    return dep;
  }

  Status load_tiers(const BackendFactory& factory) {
    FSH_ASSIGN_OR_RETURN(std::shared_ptr<Deployment> dep,
                         build_deployment(config, factory, nullptr, true));
    install(std::move(dep));
    ready.store(true, std::memory_order_release);
    return Status::Ok();
  }

  Status reload(config::GatewayConfig next, const BackendFactory& factory) {
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
      if (app_memory_level) dep->hybrid->set_memory_pressure_level(app_memory_level);
      old = std::exchange(live, std::move(dep));
    }
    // `old` is released here or by the last request still using it.
  }

  // OpenAI's list shape; every name a client may send is listed, each saying
  // which tier it reaches.
  std::string render_models(const Deployment& dep,
                            std::unordered_map<std::string, std::string>& by_id) const {
    const std::vector<Tier>& loaded = dep.tiers;
    const auto& by_model = dep.by_model;
    const size_t default_tier = dep.default_tier;
    std::vector<std::pair<std::string, size_t>> entries(by_model.begin(), by_model.end());
    std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
      return a.second != b.second ? a.second < b.second : a.first < b.first;
    });
    if (!by_model.contains(kRoutedModel))
      entries.insert(entries.begin(), {kRoutedModel, default_tier});
    std::string out = "{\"object\":\"list\",\"data\":[";
    for (size_t i = 0; i < entries.size(); ++i) {
      const Tier& t = loaded[entries[i].second];
      const backend::BackendInfo& info = t.backend->info();
      std::string model = "{\"id\":";
      append_json_string(model, entries[i].first);
      model += ",\"object\":\"model\",\"created\":" + std::to_string(started_at) +
               ",\"owned_by\":\"foreshore\",\"foreshore\":{\"tier\":";
      append_json_string(model, t.config.name);
      model += ",\"kind\":";
      append_json_string(model, t.config.kind());
      model += ",\"placement\":";
      append_json_string(model, placement_name(t.config.placement));
      model += ",\"model\":";
      append_json_string(model, info.model);
      model += ",\"model_version\":";
      append_json_string(model, info.model_version);
      model += ",\"context_length\":" + std::to_string(info.context_length) + "}}";
      if (i > 0) out += ',';
      out += model;
      by_id.emplace(entries[i].first, std::move(model));
    }
    // The names that choose a policy per request ("foreshore/cascade"), so a
    // client that checks its model against this list can send them.
    for (std::string_view policy : route::policy_names()) {
      const std::string id = std::string(kRoutedModel) + "/" + std::string(policy);
      if (by_model.contains(id)) continue;
      std::string model = "{\"id\":";
      append_json_string(model, id);
      model += ",\"object\":\"model\",\"created\":" + std::to_string(started_at) +
               ",\"owned_by\":\"foreshore\",\"foreshore\":{\"policy\":";
      append_json_string(model, policy);
      model += "}}";
      out += ',';
      out += model;
      by_id.emplace(id, std::move(model));
    }
    out += "]}";
    return out;
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

Status Gateway::load_tiers(const BackendFactory& factory) {
  return impl_->load_tiers(factory);
}

Status Gateway::reload(Result<config::GatewayConfig> config, const BackendFactory& factory) {
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
  httplib::Request req;
  for (const auto& [name, value] : headers) req.headers.emplace(name, value);
  std::string out;
  if (auto e = Impl::explain_route(*dep, req, body, out)) {
    const ErrorKind kind = e->status == 404  ? ErrorKind::kNotFound
                           : e->status < 500 ? ErrorKind::kInvalidArgument
                                             : ErrorKind::kUnavailable;
    return make_error(kind, "HTTP " + std::to_string(e->status) +
                                (e->code.empty() ? "" : " " + e->code) + ": " + e->message);
  }
  return out;
}

Gateway::Reply Gateway::chat(const std::string& body,
                             const std::vector<std::pair<std::string, std::string>>& headers,
                             const backend::DeltaSink& on_delta) {
  const auto start = Clock::now();
  ActiveRequest active_request(impl_->active);
  httplib::Request req;
  for (const auto& [name, value] : headers) req.headers.emplace(name, value);
  httplib::Response res;
  std::string id = impl_->new_id();
  res.set_header("x-foreshore-decision-id", id);
  const backend::DeltaSink sink =
      on_delta ? on_delta : backend::DeltaSink([](const backend::Delta&) { return true; });
  impl_->generate(ApiKind::kChat, req, body, res, start, std::move(id), impl_->deployment(),
                  std::move(active_request), sink);
  Reply reply;
  reply.status = res.status == -1 ? 200 : res.status;  // httplib's "not set": 200 when sent
  for (const auto& [name, value] : res.headers) reply.headers.emplace_back(name, value);
  reply.body = std::move(res.body);
  return reply;
}

Status Gateway::set_memory_pressure_level(std::optional<int> level) {
  if (level && (*level < 0 || *level > 3)) {
    return make_error(ErrorKind::kInvalidArgument,
                      "memory-pressure level " + std::to_string(*level) +
                          " is out of range; pass 0 (none) to 3 (critical), or none to measure");
  }
  std::lock_guard lock(impl_->live_mu);
  impl_->app_memory_level = level;
  if (impl_->live) impl_->live->hybrid->set_memory_pressure_level(level);
  return {};
}

void Gateway::set_log_sink(std::function<void(std::string_view line)> sink) {
  impl_->log_sink = std::move(sink);
}

bool Gateway::ready() const {
  return impl_->ready.load(std::memory_order_acquire);
}
const config::GatewayConfig& Gateway::config() const {
  return impl_->config;
}
MetricsRegistry& Gateway::metrics() {
  return impl_->metrics;
}

}  // namespace foreshore::serve
