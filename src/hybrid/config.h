// Gateway configuration: one YAML file, or a few command-line flags for the
// simple cases. Everything is validated before the server starts so that a
// typo fails loudly at start instead of silently changing behaviour.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "backend/backend.h"
#include "common/result.h"
#include "route/router.h"
#include "route/sensitivity.h"
#include "state/state.h"

namespace foreshore::config {

// The limits: section, which replicas enforce together (hybrid/shared_limits.h).
struct Limits {
  int64_t requests_per_minute = 0;  // 0: none
  int64_t tokens_per_minute = 0;    // prompt + completion tokens; 0: none
  double budget_usd = 0.0;          // total spend at configured prices; 0: none
};

struct LimitsConfig {
  Limits per_key;                          // each client key (or all anonymous clients) alone
  std::map<std::string, Limits> per_tier;  // each tier, over all clients
  std::map<std::string, Limits> per_team;  // each team, over its virtual keys
};

struct ServerConfig {
  std::string host = "127.0.0.1";  // loopback unless the operator opts in
  int port = 8080;                 // 0 picks a free port
  // Client keys accepted as `Authorization: Bearer KEY`; empty = no auth. Holds
  // the keys listed in the file and those read from api_keys_env at load.
  std::vector<std::string> api_keys;
  std::string api_keys_env;  // variable with comma-separated keys
  // Variable holding the key of the admin API (POST/DELETE /admin/keys);
  // unset: that API is off. admin_key is its value, read at load.
  std::string admin_key_env;
  std::string admin_key;
  size_t max_body_bytes = 4u << 20;
  int32_t max_concurrent_requests = 1024;  // generations at once; beyond this, 429
  int32_t request_timeout_ms = 120000;     // whole-request deadline; 504 past it
  std::string default_tier;                // empty: the first device tier
  // Most HTTP worker threads; httplib holds one per open connection, so this
  // bounds the connections served at once. Threads start on demand.
  // 0 = max_concurrent_requests + 64, so that requests over the limit still
  // get a prompt 429 instead of waiting for a worker.
  int32_t worker_threads = 0;
  // Worker threads beyond the first few exit after this long without work,
  // so that memory taken during a burst of connections is given back.
  int32_t worker_idle_timeout_ms = 10000;
  bool log_requests = true;  // one line per request on stderr
  std::string audit_db;      // SQLite audit trail; empty: none
  // PostgreSQL audit trail shared by replicas (libpq connection string); empty: none.
  std::string audit_postgres;
  std::string audit_spool = "foreshore-audit-spool.jsonl";  // records wait here while it is down
  std::string decision_log;  // JSONL of every routing decision, without raw text; empty: none
  // Past this size the decision log moves to decision_log.1 and starts
  // again, so that a retry storm cannot fill the disk; 0: no limit.
  double decision_log_max_mb = 256;
  bool audit_store_text = false;    // keep prompt text, not only its hash
  int64_t audit_max_rows = 0;       // retention: keep the newest N rows; 0 keeps all
  int64_t audit_max_age_hours = 0;  // retention: drop rows older than this; 0 keeps all
  double shadow_fraction = 0.0;     // share of edge answers re-scored on the cloud
  // > 0: the complexity threshold adapts to keep shadow agreement at or above this.
  double shadow_target_agreement = 0.0;
  // Data classes whose requests may be shadowed on the cloud (device-only never).
  std::vector<std::string> shadow_data_classes{"public"};
  int64_t memory_budget_mb = 0;                // the gateway's own memory budget; 0: none
  int32_t memory_pressure_interval_ms = 1000;  // how often memory pressure is sampled
  // On SIGTERM, how long in-flight requests may take to finish before the
  // process exits anyway.
  int32_t shutdown_timeout_ms = 30000;
  // Web origins ("https://app.example.com", or "*") whose pages may call the
  // gateway from a browser (CORS). Empty: none, so that a page the user
  // happens to visit cannot read what a local gateway answers.
  std::vector<std::string> cors_origins;
};

struct ModelAlias {
  std::string name;  // model name clients send
  std::string tier;
  // Tiers tried in order when `tier` fails before answering; tiers the
  // request's data may not reach are skipped.
  std::vector<std::string> fallback;
};

struct GatewayConfig {
  std::string source;  // file name, or "command line", for messages
  ServerConfig server;
  std::vector<backend::TierConfig> tiers;  // in file order
  std::vector<ModelAlias> models;
  // The routing: and privacy: sections, read at load (privacy: is
  // routing.privacy): what the router is created from.
  route::RouterConfig routing;
  // Whether the file has a routing: section; without one, server.default_tier
  // is a fixed tier.
  bool routing_configured = false;
  state::StateSettings state;  // the state: section
  LimitsConfig limits;         // the limits: section

  // The tiers' names, in file order.
  std::vector<std::string> tier_names() const;
};

// Every key the config file accepts, as dotted paths; NAME stands for a name
// the file chooses (a tier, a model alias, a detector) and [] for any list
// item. docs/CONFIG.md documents exactly these (tests/serve_test.cpp checks).
std::vector<std::string> config_keys();

// Parses and validates YAML text; `source` names it in error messages.
Result<GatewayConfig> parse_config(std::string_view yaml, std::string_view source);
Result<GatewayConfig> load_config(const std::string& path);

// The no-YAML path: `serve -m MODEL` and/or `--upstream URL --upstream-model NAME`.
struct FlagConfig {
  std::string model;           // embedded device tier "edge"
  std::string upstream;        // OpenAI-compatible base URL: cloud tier "cloud"
  std::string upstream_model;  // model id at the upstream
  std::string upstream_api_key_env;
  std::string api_keys_env;  // client keys, as server.api_keys_env
  int32_t threads = 0;
  int32_t context_length = 0;
};
Result<GatewayConfig> config_from_flags(const FlagConfig& flags);

// The routing: section (policy, edge_tier, cloud_tier, complexity_model,
// threshold, cascade{...}, consistency{min_similarity}, optimize{cost_weight,
// latency_weight}, learning{...}, default_max_tokens) as the router's
// configuration, without its privacy part. Every problem is reported, one per
// line, as "SOURCE: routing.key.path: problem".
Result<route::RouterConfig> router_config_from_yaml(const YAML::Node& routing,
                                                    std::string_view source);
// Every key routing: accepts, as paths below it ("cascade.hold_back_tokens").
std::vector<std::string> router_config_keys();

// The privacy: section (keys detectors, patterns, keywords; see
// docs/PRIVACY.md). Every problem is reported, one per line, as
// "SOURCE: privacy.key.path: problem". `path` is where the node sits in the file.
Result<route::SensitivityConfig> sensitivity_config_from_yaml(const YAML::Node& privacy,
                                                              std::string_view source,
                                                              std::string_view path = "privacy");
// Every key privacy: accepts, as paths below it ("patterns[].regex"; NAME
// stands for a built-in detector's name).
std::vector<std::string> sensitivity_config_keys();

// Checks cross-field rules (both paths above call it); every problem found is
// reported, one per line, as "SOURCE: key.path: problem".
Status validate_config(const GatewayConfig& config);

}  // namespace foreshore::config
