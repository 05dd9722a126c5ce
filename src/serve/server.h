// The OpenAI-compatible gateway: an HTTP server in front of the configured
// tiers. Until the router lands, a request runs on the tier its
// x-switchyard-tier header or model names, else on the default tier.
#pragma once

#include <functional>
#include <memory>

#include "backend/backend.h"
#include "common/result.h"
#include "serve/config.h"
#include "serve/metrics.h"

namespace sy::serve {

using BackendFactory =
    std::function<Result<std::shared_ptr<backend::Backend>>(const backend::TierConfig&)>;

class Gateway {
 public:
  explicit Gateway(GatewayConfig config);
  ~Gateway();
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  // Binds the listening socket and returns the port (the chosen one when the
  // configured port is 0). /healthz answers from then on.
  Result<int> bind();
  // Creates every tier in config order; /readyz and the API answer 503 until
  // it succeeds. Callable while run() is serving, so big models load behind a
  // live health endpoint.
  Status load_tiers(const BackendFactory& factory = backend::create_backend);
  // Serves until stop(); blocks the calling thread.
  void run();
  // Stops accepting, ends open streams and returns once run() can return.
  // Safe from any thread, before or during run(); join the thread that runs
  // run() before destroying the gateway.
  void stop();

  bool ready() const;
  const GatewayConfig& config() const;
  MetricsRegistry& metrics();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sy::serve
