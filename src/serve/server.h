// The OpenAI-compatible gateway: an HTTP server in front of the configured
// tiers, routing every request through the hybrid router.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "common/result.h"
#include "hybrid/config.h"
#include "hybrid/deployment.h"
#include "observe/metrics.h"

namespace foreshore::serve {

class Gateway {
 public:
  explicit Gateway(config::GatewayConfig config);
  ~Gateway();
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  // Binds the listening socket and returns the port (the chosen one when the
  // configured port is 0). /healthz answers from then on.
  Result<int> bind();
  // Creates every tier in config order; /readyz and the API answer 503 until
  // it succeeds. Callable while run() is serving, so big models load behind a
  // live health endpoint.
  Status load_tiers(const hybrid::BackendFactory& factory = backend::create_backend);
  // Replaces the configuration while serving (SIGHUP): builds the new tiers
  // and router first, reusing tiers whose settings did not change, and swaps
  // them in only when all of it succeeded; on error the old configuration
  // stays in force. Requests already running finish on the old one.
  // server.host, port, max_body_bytes, worker_threads and
  // worker_idle_timeout_ms need a restart.
  // A config that could not be read or validated is passed as its error, so
  // that it is counted (foreshore_config_reloads_total{outcome="failed"}).
  Status reload(Result<config::GatewayConfig> config,
                const hybrid::BackendFactory& factory = backend::create_backend);
  // Graceful shutdown, first step: new requests get 503 "shutting_down" (and
  // /readyz 503) while those already running go on; stop() once
  // active_requests() is 0 or the grace period is over.
  void begin_drain();
  int32_t active_requests() const;
  // Ends every running stream with an SSE error event that says why (the
  // shutdown limit), so that clients see an error rather than a cut, and
  // their requests are logged as failed. Returns how many it ended.
  int32_t end_streams(const std::string& why);
  // Serves until stop(); blocks the calling thread.
  void run();
  // Stops accepting, ends open streams and returns once run() can return.
  // Safe from any thread, before or during run(); join the thread that runs
  // run() before destroying the gateway.
  void stop();

  // The routing decision for a chat request `body` with request `headers`
  // (routing hints such as x-foreshore-data-class), explained and not run:
  // the JSON POST /v1/route answers with, or its error as HTTP status, code
  // and message. Needs load_tiers() first.
  Result<std::string> explain_route(
      const std::string& body,
      const std::vector<std::pair<std::string, std::string>>& headers) const;

  bool ready() const;
  const config::GatewayConfig& config() const;
  observe::MetricsRegistry& metrics();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace foreshore::serve
