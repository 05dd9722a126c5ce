// The gateway's endpoints beside the OpenAI API: virtual keys (/admin/keys),
// client feedback (/v1/feedback) and the learning router's status
// (/v1/router/status), each computing its reply (http.h). `pipeline` is the
// live deployment's, null while the tiers are still loading (answered 503).
#pragma once

#include "hybrid/config.h"
#include "hybrid/pipeline.h"
#include "serve/http.h"

namespace foreshore::serve {

HttpReply answer_admin_keys(const config::GatewayConfig& config, hybrid::Pipeline* pipeline,
                            const HttpRequest& req);
// These two answer a client the caller has already authenticated.
HttpReply answer_feedback(hybrid::Pipeline* pipeline, const HttpRequest& req);
HttpReply answer_router_status(hybrid::Pipeline* pipeline);

}  // namespace foreshore::serve
