// The gateway's endpoints beside the OpenAI API: virtual keys (/admin/keys),
// client feedback (/v1/feedback) and the learning router's status
// (/v1/router/status). `pipeline` is the live deployment's, null while the
// tiers are still loading (answered 503).
#pragma once

#include <httplib.h>

#include "hybrid/config.h"
#include "hybrid/pipeline.h"

namespace foreshore::serve {

void answer_admin_keys(const config::ServerConfig& server, hybrid::Pipeline* pipeline,
                       const httplib::Request& req, httplib::Response& res);
void answer_feedback(const config::ServerConfig& server, hybrid::Pipeline* pipeline,
                     const httplib::Request& req, httplib::Response& res);
void answer_router_status(const config::ServerConfig& server, hybrid::Pipeline* pipeline,
                          const httplib::Request& req, httplib::Response& res);

}  // namespace foreshore::serve
