#include "serve/admin.h"

#include <ctime>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "hybrid/hybrid.h"
#include "hybrid/openai.h"
#include "serve/http.h"

namespace foreshore::serve {

using openai::ApiError;
using openai::from_backend_error;
using openai::invalid_request;
using openai::parse_client_json;

// POST /admin/keys and DELETE /admin/keys/ID, for server.admin_key_env's key.
HttpReply answer_admin_keys(const config::GatewayConfig& config, hybrid::Pipeline* pipeline,
                            const HttpRequest& req) {
  const config::ServerConfig& server = config.server;
  ApiError e;
  e.status = 401;
  e.code = "invalid_admin_key";
  if (server.admin_key.empty()) {
    e.status = 404;
    e.code = "admin_disabled";
    e.message = "The admin API is off; set server.admin_key_env to turn it on";
  } else if (!constant_time_equal(hybrid::bearer_key(req.authorization()), server.admin_key)) {
    e.message = "The admin API needs 'Authorization: Bearer ADMIN_KEY' (server.admin_key_env)";
  } else if (pipeline == nullptr) {
    e = not_ready();
  } else {
    state::SharedState& state = pipeline->shared_state();
    if (req.method == "DELETE") {
      const std::string& key_id = req.path_match;
      if (auto s = hybrid::revoke_virtual_key(state, key_id); !s.ok()) {
        e = from_backend_error(s.error());
        e.status = s.error().kind == ErrorKind::kNotFound ? 404 : 503;
      } else {
        return json_reply("{\"revoked\":" + nlohmann::json(key_id).dump() + "}");
      }
    } else {
      nlohmann::json body;
      std::optional<ApiError> invalid = parse_client_json(req.body, body);
      Result<hybrid::VirtualKey> spec = hybrid::VirtualKey{};
      if (!invalid) spec = hybrid::virtual_key_from_json(req.body);
      if (!invalid && spec.ok() && body.contains("expires_in_seconds")) {
        // Up to 100 years: a key meant to expire must not wrap into "never".
        constexpr int64_t kMaxSeconds = int64_t{100} * 366 * 86400;
        const auto& seconds = body["expires_in_seconds"];
        if (!seconds.is_number_integer() || seconds.get<int64_t>() < 0 ||
            seconds.get<int64_t>() > kMaxSeconds) {
          invalid = invalid_request(
              "expires_in_seconds must be a whole number of seconds from 0 "
              "(never) to 3162240000 (100 years)",
              "expires_in_seconds", "invalid_virtual_key");
        } else if (seconds.get<int64_t>() > 0) {
          spec->expires_at = std::time(nullptr) + seconds.get<int64_t>();
        }
      }
      if (invalid) {
        e = *invalid;
      } else if (!spec.ok()) {
        e = invalid_request(spec.error().message, "", "invalid_virtual_key");
      } else if (auto secret = hybrid::create_virtual_key(state, *spec, config.tier_names());
                 !secret.ok() && secret.error().kind == ErrorKind::kInvalidArgument) {
        e = invalid_request(secret.error().message, "", "invalid_virtual_key");
      } else if (!secret.ok()) {
        e = from_backend_error(secret.error());
        e.status = 503;
      } else {
        auto out = nlohmann::json::parse(hybrid::virtual_key_json(*spec));
        out["key"] = *secret;
        return json_reply(out.dump(), 201);
      }
    }
  }
  return error_reply(e);
}

// POST /v1/feedback {"decision_id": ..., "score": 0..1 | "thumbs": "up"|"down"}: a
// client's verdict on an answer, learned from on the device (hybrid/learning.h).
HttpReply answer_feedback(hybrid::Pipeline* pipeline, const HttpRequest& req) {
  if (pipeline == nullptr) return error_reply(not_ready());
  hybrid::RouterLearning* learning = pipeline->learning();
  if (learning == nullptr) {
    ApiError e = invalid_request(
        "Router learning is off here, so feedback has nowhere to go; set "
        "routing.learning.enabled: true in the gateway config",
        {}, "learning_off");
    e.status = 404;
    return error_reply(e);
  }
  nlohmann::json body;
  if (auto e = parse_client_json(req.body, body)) return error_reply(*e);
  if (!body.contains("decision_id") || !body["decision_id"].is_string()) {
    return error_reply(
        invalid_request("The body must be a JSON object with a \"decision_id\" "
                        "string (from the answer's decision_id or "
                        "x-foreshore-decision-id)",
                        "decision_id"));
  }
  if (body.contains("score") == body.contains("thumbs")) {
    return error_reply(
        invalid_request("Give one verdict: \"score\" as a number from 0 (bad answer) to 1 "
                        "(good answer), or \"thumbs\": \"up\" or \"down\"",
                        "score"));
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
    return error_reply(
        invalid_request("Give \"score\" as a number from 0 (bad answer) to 1 "
                        "(good answer), or \"thumbs\": \"up\" or \"down\"",
                        body.contains("score") ? "score" : "thumbs"));
  }
  const std::string id = body["decision_id"].get<std::string>();
  auto result = learning->feedback(id, *score);
  if (!result.ok()) {
    const bool repeated = result.error().kind == ErrorKind::kInvalidArgument;
    ApiError e = invalid_request(result.error().message, "decision_id",
                                 repeated ? "feedback_already_given" : "unknown_decision");
    e.status = repeated ? 409 : 404;
    return error_reply(e);
  }
  nlohmann::ordered_json out = {
      {"decision_id", id}, {"accepted", true}, {"learned", result->learned}};
  if (!result->reason.empty()) out["reason"] = result->reason;
  return json_reply(out.dump());
}

// GET /v1/router/status: what the router has learned (labels per source,
// threshold, its own APGR estimate).
HttpReply answer_router_status(hybrid::Pipeline* pipeline) {
  if (pipeline == nullptr) return error_reply(not_ready());
  nlohmann::ordered_json out = {{"learning", false}};
  if (hybrid::RouterLearning* learning = pipeline->learning()) out = learning->status();
  const auto learner = pipeline->router().learner();
  out["threshold_in_force"] =
      learner && learner->recalibrates() ? learner->threshold() : pipeline->router().threshold();
  return json_reply(out.dump());
}

}  // namespace foreshore::serve
