// GET /readyz: whether the gateway serves, and the state of each tier and of
// the shared state behind it.
#pragma once

#include "hybrid/deployment.h"
#include "serve/http.h"

namespace foreshore::serve {

// 503 while draining or before the first configuration loaded (`dep` null);
// otherwise 200, "ready" or "degraded" (a tier unavailable or failing, the
// shared state unreachable), with each tier's state.
HttpReply readiness(const hybrid::Deployment* dep, bool draining);

}  // namespace foreshore::serve
