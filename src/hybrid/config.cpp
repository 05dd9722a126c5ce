#include "hybrid/config.h"

#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <set>
#include <span>
#include <sstream>
#include <type_traits>

#include "engine/engine.h"
#include "hybrid/yaml_reader.h"
#include "route/router.h"
#include "route/sensitivity.h"

namespace foreshore::config {
namespace {

// The keys each map accepts. The reader checks against these lists and
// config_keys() reports them, so docs/CONFIG.md is tested against the
// parser's own list.
constexpr std::array<std::string_view, 7> kTopKeys{"server",  "tiers", "models", "routing",
                                                   "privacy", "state", "limits"};
constexpr std::array<std::string_view, 7> kStateKeys{
    "backend", "url", "password_env", "timeout_ms", "pool_size", "retry_ms", "budgets_when_down"};
constexpr std::array<std::string_view, 3> kLimitKeys{"requests_per_minute", "tokens_per_minute",
                                                     "budget_usd"};
constexpr std::array<std::string_view, 27> kServerKeys{"host",
                                                       "port",
                                                       "api_keys",
                                                       "api_keys_env",
                                                       "max_body_bytes",
                                                       "max_concurrent_requests",
                                                       "request_timeout_ms",
                                                       "default_tier",
                                                       "worker_threads",
                                                       "worker_idle_timeout_ms",
                                                       "log_requests",
                                                       "audit_db",
                                                       "decision_log",
                                                       "audit_store_text",
                                                       "shadow_fraction",
                                                       "memory_budget_mb",
                                                       "memory_pressure_interval_ms",
                                                       "shutdown_timeout_ms",
                                                       "shadow_target_agreement",
                                                       "shadow_data_classes",
                                                       "audit_max_rows",
                                                       "decision_log_max_mb",
                                                       "audit_max_age_hours",
                                                       "admin_key_env",
                                                       "audit_postgres",
                                                       "audit_spool",
                                                       "cors_origins"};
constexpr std::array<std::string_view, 17> kTierKeys{
    "kind",          "placement",       "model",       "endpoint",       "api_key_env",
    "price",         "max_concurrency", "max_queue",   "context_length", "kv_memory_mb",
    "kv_cache_type", "threads",         "chat_format", "timeouts",       "verify_tls",
    "ca_file",       "low_memory_model"};
constexpr std::array<std::string_view, 2> kPriceKeys{"input_per_mtok", "output_per_mtok"};
constexpr std::array<std::string_view, 4> kTimeoutKeys{"connect_ms", "first_byte_ms", "total_ms",
                                                       "pool_wait_ms"};
constexpr std::array<std::string_view, 2> kAliasKeys{"tier", "fallback"};

void read_server(YamlReader& r, const YAML::Node& node, ServerConfig& s) {
  const std::string path = "server";
  if (!r.expect_map(node, path)) return;
  r.check_keys(node, path, kServerKeys);
  r.get(node, "host", path, s.host);
  r.get(node, "port", path, s.port);
  r.get_string_list(node, "api_keys", path, s.api_keys);
  r.get_string_list(node, "cors_origins", path, s.cors_origins);
  for (const auto& origin : s.cors_origins) {
    if (origin != "*" && !origin.starts_with("http://") && !origin.starts_with("https://")) {
      r.fail(join_path(path, "cors_origins"),
             "'" + origin +
                 "' is not an origin: give scheme and host (https://app.example.com) "
                 "or '*' for any");
    }
  }
  r.get(node, "api_keys_env", path, s.api_keys_env);
  r.get(node, "admin_key_env", path, s.admin_key_env);
  r.get(node, "max_body_bytes", path, s.max_body_bytes);
  r.get(node, "max_concurrent_requests", path, s.max_concurrent_requests);
  r.get(node, "request_timeout_ms", path, s.request_timeout_ms);
  r.get(node, "default_tier", path, s.default_tier);
  r.get(node, "worker_threads", path, s.worker_threads);
  r.get(node, "worker_idle_timeout_ms", path, s.worker_idle_timeout_ms);
  r.get(node, "log_requests", path, s.log_requests);
  r.get(node, "audit_db", path, s.audit_db);
  r.get(node, "audit_postgres", path, s.audit_postgres);
  r.get(node, "audit_spool", path, s.audit_spool);
  if (!s.audit_postgres.empty() && s.audit_spool.empty()) {
    r.fail(join_path(path, "audit_spool"), "must name a file when audit_postgres is set");
  }
  r.get(node, "decision_log", path, s.decision_log);
  r.get(node, "decision_log_max_mb", path, s.decision_log_max_mb);
  if (!(s.decision_log_max_mb >= 0)) {
    r.fail(join_path(path, "decision_log_max_mb"), "must be 0 (no limit) or more");
  }
  r.get(node, "audit_store_text", path, s.audit_store_text);
  r.get(node, "audit_max_rows", path, s.audit_max_rows);
  if (s.audit_max_rows < 0)
    r.fail(join_path(path, "audit_max_rows"), "must be 0 (keep all) or more");
  r.get(node, "audit_max_age_hours", path, s.audit_max_age_hours);
  if (s.audit_max_age_hours < 0) {
    r.fail(join_path(path, "audit_max_age_hours"), "must be 0 (keep all) or more");
  }
  r.get(node, "shadow_fraction", path, s.shadow_fraction);
  if (s.shadow_fraction < 0.0 || s.shadow_fraction > 1.0) {
    r.fail(join_path(path, "shadow_fraction"), "must be between 0 and 1");
  }
  r.get(node, "shadow_target_agreement", path, s.shadow_target_agreement);
  if (s.shadow_target_agreement < 0.0 || s.shadow_target_agreement > 1.0) {
    r.fail(join_path(path, "shadow_target_agreement"), "must be between 0 (off) and 1");
  }
  if (node["shadow_data_classes"]) {
    s.shadow_data_classes.clear();
    r.get_string_list(node, "shadow_data_classes", path, s.shadow_data_classes);
    for (const auto& name : s.shadow_data_classes) {
      auto c = route::parse_data_class(name);
      if (!c.ok() || *c == route::DataClass::kDeviceOnly) {
        r.fail(join_path(path, "shadow_data_classes"),
               "'" + name + "' is not a class that may be shadowed; list any of public, " +
                   "prefer-local, contractual (device-only data never leaves)");
      }
    }
  }
  r.get(node, "memory_budget_mb", path, s.memory_budget_mb);
  r.get(node, "memory_pressure_interval_ms", path, s.memory_pressure_interval_ms);
  if (s.memory_pressure_interval_ms < 10) {
    r.fail(join_path(path, "memory_pressure_interval_ms"), "must be at least 10");
  }
  r.get(node, "shutdown_timeout_ms", path, s.shutdown_timeout_ms);
  if (s.shutdown_timeout_ms < 0) {
    r.fail(join_path(path, "shutdown_timeout_ms"), "must be 0 (stop at once) or more");
  }
}

// The keys only one kind of tier reads. On a tier of the other kind they would
// be ignored, so they are an error.
constexpr std::array<std::string_view, 6> kEmbeddedOnlyKeys{"context_length", "kv_memory_mb",
                                                            "kv_cache_type",  "threads",
                                                            "chat_format",    "low_memory_model"};
constexpr std::array<std::string_view, 5> kOpenAiOnlyKeys{"endpoint", "api_key_env", "timeouts",
                                                          "verify_tls", "ca_file"};

void reject_keys_of_other_kind(YamlReader& r, const YAML::Node& node, const std::string& path,
                               std::span<const std::string_view> keys, backend::TierKind kind) {
  for (const std::string_view key : keys) {
    if (node[std::string(key)]) {
      r.fail(join_path(path, key), "only applies to kind " + std::string(backend::kind_name(kind)));
    }
  }
}

void read_embedded_settings(YamlReader& r, const YAML::Node& node, const std::string& path,
                            backend::EmbeddedTierSettings& e) {
  r.get(node, "context_length", path, e.context_length);
  r.get(node, "kv_memory_mb", path, e.kv_memory_mb);
  r.get(node, "threads", path, e.threads);
  r.get(node, "chat_format", path, e.chat_format);
  r.get(node, "kv_cache_type", path, e.kv_cache_type);
  r.get(node, "low_memory_model", path, e.low_memory_model);
  reject_keys_of_other_kind(r, node, path, kOpenAiOnlyKeys, backend::OpenAiTierSettings::kKind);
}

void read_openai_settings(YamlReader& r, const YAML::Node& node, const std::string& path,
                          backend::OpenAiTierSettings& o) {
  r.get(node, "endpoint", path, o.endpoint);
  r.get(node, "api_key_env", path, o.api_key_env);
  r.get(node, "verify_tls", path, o.verify_tls);
  r.get(node, "ca_file", path, o.ca_file);
  if (const YAML::Node timeouts = node["timeouts"]) {
    const std::string p = join_path(path, "timeouts");
    if (r.expect_map(timeouts, p)) {
      r.check_keys(timeouts, p, kTimeoutKeys);
      r.get(timeouts, "connect_ms", p, o.connect_timeout_ms);
      r.get(timeouts, "first_byte_ms", p, o.first_byte_timeout_ms);
      r.get(timeouts, "total_ms", p, o.total_timeout_ms);
      r.get(timeouts, "pool_wait_ms", p, o.pool_wait_timeout_ms);
    }
  }
  reject_keys_of_other_kind(r, node, path, kEmbeddedOnlyKeys, backend::EmbeddedTierSettings::kKind);
}

void read_tier(YamlReader& r, const YAML::Node& node, const std::string& path,
               backend::TierConfig& t) {
  if (!r.expect_map(node, path)) return;
  r.check_keys(node, path, kTierKeys);
  std::string kind;
  r.get(node, "kind", path, kind);
  // A tier with an endpoint is a remote one unless it says otherwise.
  if (kind.empty()) {
    kind = backend::kind_name(node["endpoint"] ? backend::TierKind::kOpenAi
                                               : backend::TierKind::kEmbedded);
  }
  if (kind == backend::kind_name(backend::TierKind::kOpenAi)) {
    read_openai_settings(r, node, path, t.settings.emplace<backend::OpenAiTierSettings>());
    // An HTTP tier's concurrency is pooled connections, which cost little:
    // the default lets many streams wait on a slow upstream at once.
    t.max_concurrency = backend::kDefaultRemoteConcurrency;
  } else if (kind == backend::kind_name(backend::TierKind::kEmbedded)) {
    read_embedded_settings(r, node, path, t.settings.emplace<backend::EmbeddedTierSettings>());
  } else {
    r.fail(join_path(path, "kind"), "'" + kind + "' is not one of embedded, openai");
  }
  std::string placement;
  r.get(node, "placement", path, placement);
  r.get(node, "model", path, t.model);
  r.get(node, "max_concurrency", path, t.max_concurrency);
  r.get(node, "max_queue", path, t.max_queue);

  if (placement.empty()) {
    t.placement = t.openai() != nullptr ? backend::Placement::kCloud : backend::Placement::kDevice;
  } else if (placement == "device") {
    t.placement = backend::Placement::kDevice;
  } else if (placement == "cloud") {
    t.placement = backend::Placement::kCloud;
  } else {
    r.fail(join_path(path, "placement"), "'" + placement + "' is not one of device, cloud");
  }

  if (const YAML::Node price = node["price"]) {
    const std::string p = join_path(path, "price");
    if (r.expect_map(price, p)) {
      r.check_keys(price, p, kPriceKeys);
      r.get(price, "input_per_mtok", p, t.price_input_per_mtok);
      r.get(price, "output_per_mtok", p, t.price_output_per_mtok);
    }
  }
}

void read_state(YamlReader& r, const YAML::Node& node, state::StateSettings& s) {
  const std::string path = "state";
  if (!r.expect_map(node, path)) return;
  r.check_keys(node, path, kStateKeys);
  r.get(node, "backend", path, s.backend);
  r.get(node, "url", path, s.url);
  r.get(node, "password_env", path, s.password_env);
  r.get(node, "timeout_ms", path, s.timeout_ms);
  r.get(node, "pool_size", path, s.pool_size);
  r.get(node, "retry_ms", path, s.retry_ms);
  std::string when_down = s.budgets_fail_open ? "open" : "closed";
  r.get(node, "budgets_when_down", path, when_down);
  if (when_down != "open" && when_down != "closed") {
    r.fail(join_path(path, "budgets_when_down"), "'" + when_down + "' is not one of open, closed");
  }
  s.budgets_fail_open = when_down == "open";
  if (s.backend != "local" && s.backend != "redis") {
    r.fail(join_path(path, "backend"), "'" + s.backend + "' is not one of local, redis");
  } else if (s.backend == "redis") {
    if (s.url.empty()) {
      r.fail(join_path(path, "url"), "is required with backend redis (redis://HOST:PORT)");
    } else if (auto a = state::parse_redis_url(s.url); !a.ok()) {
      r.fail(join_path(path, "url"), a.error().message);
    }
  }
  if (s.timeout_ms < 1) r.fail(join_path(path, "timeout_ms"), "must be at least 1");
  if (s.pool_size < 1) r.fail(join_path(path, "pool_size"), "must be at least 1");
  if (s.retry_ms < 10) r.fail(join_path(path, "retry_ms"), "must be at least 10");
}

void read_limit_values(YamlReader& r, const YAML::Node& node, const std::string& path, Limits& l) {
  r.get(node, "requests_per_minute", path, l.requests_per_minute);
  r.get(node, "tokens_per_minute", path, l.tokens_per_minute);
  r.get(node, "budget_usd", path, l.budget_usd);
  if (l.requests_per_minute < 0)
    r.fail(join_path(path, "requests_per_minute"), "must be 0 (none) or more");
  if (l.tokens_per_minute < 0)
    r.fail(join_path(path, "tokens_per_minute"), "must be 0 (none) or more");
  if (l.budget_usd < 0) r.fail(join_path(path, "budget_usd"), "must be 0 (none) or more");
}

void read_limits(YamlReader& r, const YAML::Node& node, LimitsConfig& limits) {
  const std::string path = "limits";
  if (!r.expect_map(node, path)) return;
  for (const auto& kv : node) {
    const std::string key = kv.first.Scalar();
    if (key == "tiers" || key == "teams") continue;
    if (std::find(kLimitKeys.begin(), kLimitKeys.end(), key) == kLimitKeys.end()) {
      r.fail(join_path(path, key),
             "is not a key here; allowed: requests_per_minute, tokens_per_minute, budget_usd, "
             "tiers, teams");
    }
  }
  read_limit_values(r, node, path, limits.per_key);
  for (const auto& [section, into] :
       {std::pair{"tiers", &limits.per_tier}, std::pair{"teams", &limits.per_team}}) {
    const YAML::Node named = node[section];
    if (!named) continue;
    const std::string section_path = "limits." + std::string(section);
    if (!r.expect_map(named, section_path)) continue;
    for (const auto& kv : named) {
      const std::string item_path = section_path + "." + kv.first.Scalar();
      if (!r.expect_map(kv.second, item_path)) continue;
      r.check_keys(kv.second, item_path, kLimitKeys);
      read_limit_values(r, kv.second, item_path, (*into)[kv.first.Scalar()]);
    }
  }
}

bool is_http_url(std::string_view url) {
  size_t rest = 0;
  if (url.starts_with("http://")) {
    rest = 7;
  } else if (url.starts_with("https://")) {
    rest = 8;
  } else {
    return false;
  }
  const std::string_view host = url.substr(rest, url.find('/', rest) - rest);
  return !host.empty() && host.front() != ':' &&
         host.find_first_of(" \t\r\n?#@") == std::string_view::npos;
}

bool is_valid_name(std::string_view name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.';
  });
}

void split_keys(std::string_view text, std::vector<std::string>& out) {
  while (!text.empty()) {
    const size_t comma = text.find(',');
    std::string_view key = text.substr(0, comma);
    while (!key.empty() && (key.front() == ' ' || key.front() == '\t')) key.remove_prefix(1);
    while (!key.empty() && (key.back() == ' ' || key.back() == '\t' || key.back() == '\n')) {
      key.remove_suffix(1);
    }
    if (!key.empty()) out.emplace_back(key);
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
}

void read_api_keys_env(YamlReader& r, ServerConfig& s) {
  if (!s.admin_key_env.empty()) {
    const char* admin = std::getenv(s.admin_key_env.c_str());
    if (admin == nullptr || std::string_view(admin).size() < 16) {
      r.fail("server.admin_key_env", "environment variable " + s.admin_key_env +
                                         " is not set or holds a key shorter than 16 characters");
    } else {
      s.admin_key = admin;
    }
  }
  if (s.api_keys_env.empty()) return;
  const char* keys = std::getenv(s.api_keys_env.c_str());
  const size_t before = s.api_keys.size();
  if (keys != nullptr) split_keys(keys, s.api_keys);
  // Starting without the keys the operator asked for would open the gateway.
  if (s.api_keys.size() == before) {
    r.fail("server.api_keys_env",
           "environment variable " + s.api_keys_env + " is not set or holds no keys");
  }
}

Status to_status(const std::vector<std::string>& errors) {
  if (errors.empty()) return Status::Ok();
  std::string message;
  for (const auto& e : errors) message += (message.empty() ? "" : "\n") + e;
  return make_error(ErrorKind::kInvalidArgument, std::move(message));
}

}  // namespace

std::vector<std::string> GatewayConfig::tier_names() const {
  std::vector<std::string> names;
  for (const auto& t : tiers) names.push_back(t.name);
  return names;
}

Status validate_config(const GatewayConfig& config) {
  std::vector<std::string> errors;
  auto fail = [&](const std::string& path, const std::string& problem) {
    errors.push_back(config.source + ": " + path + ": " + problem);
  };
  const ServerConfig& s = config.server;
  if (s.host.empty()) fail("server.host", "must not be empty");
  if (s.port < 0 || s.port > 65535) {
    fail("server.port", std::to_string(s.port) + " is not a port (0-65535; 0 picks a free one)");
  }
  if (s.max_body_bytes < 1024) fail("server.max_body_bytes", "must be at least 1024");
  if (s.max_concurrent_requests < 1) fail("server.max_concurrent_requests", "must be at least 1");
  if (s.request_timeout_ms < 1) fail("server.request_timeout_ms", "must be at least 1");
  if (s.worker_threads < 0) fail("server.worker_threads", "must be 0 (auto) or more");
  if (s.worker_idle_timeout_ms < 1) fail("server.worker_idle_timeout_ms", "must be at least 1");
  for (size_t i = 0; i < s.api_keys.size(); ++i) {
    if (s.api_keys[i].empty()) fail("server.api_keys[" + std::to_string(i) + "]", "is empty");
  }

  if (config.tiers.empty()) {
    fail("tiers", "at least one tier is required (an embedded model or an OpenAI endpoint)");
  }
  std::set<std::string> names;
  for (const auto& t : config.tiers) {
    const std::string path = "tiers." + t.name;
    if (!is_valid_name(t.name)) {
      fail(path, "tier names use only letters, digits, '-', '_' and '.'");
    }
    if (!names.insert(t.name).second) fail(path, "is defined twice");
    const backend::OpenAiTierSettings* openai = t.openai();
    if (t.model.empty()) {
      fail(path + ".model", openai ? "is required: the model id to ask the endpoint for"
                                   : "is required: a GGUF path or a model name");
    }
    if (openai) {
      if (openai->endpoint.empty()) {
        fail(path + ".endpoint", "is required for kind openai (e.g. https://api.openai.com/v1)");
      } else if (!is_http_url(openai->endpoint)) {
        fail(path + ".endpoint", "'" + openai->endpoint + "' is not an http(s) URL");
      }
      if (!openai->api_key_env.empty() && std::getenv(openai->api_key_env.c_str()) == nullptr) {
        fail(path + ".api_key_env", "environment variable " + openai->api_key_env + " is not set");
      }
      if (!openai->ca_file.empty() && access(openai->ca_file.c_str(), R_OK) != 0) {
        fail(path + ".ca_file", "'" + openai->ca_file + "' cannot be read");
      }
      if (openai->connect_timeout_ms < 1) fail(path + ".timeouts.connect_ms", "must be at least 1");
      if (openai->first_byte_timeout_ms < 1) {
        fail(path + ".timeouts.first_byte_ms", "must be at least 1");
      }
      if (openai->total_timeout_ms < 1) fail(path + ".timeouts.total_ms", "must be at least 1");
      if (openai->pool_wait_timeout_ms < 0) {
        fail(path + ".timeouts.pool_wait_ms", "must be 0 or more");
      }
    } else {
      const backend::EmbeddedTierSettings& embedded = *t.embedded();
      if (!embedded.low_memory_model.empty()) {
        if (auto found = engine::resolve_model_path(embedded.low_memory_model); !found.ok()) {
          fail(path + ".low_memory_model", found.error().message);
        }
      }
      if (!embedded.chat_format.empty() && !engine::parse_chat_format(embedded.chat_format)) {
        fail(path + ".chat_format",
             "'" + embedded.chat_format + "' is not one of " + engine::chat_format_names());
      }
      if (embedded.context_length < 0) {
        fail(path + ".context_length", "must be 0 (model's own) or more");
      }
      if (embedded.kv_memory_mb < 1) fail(path + ".kv_memory_mb", "must be at least 1");
      if (embedded.kv_cache_type != "f16" && embedded.kv_cache_type != "q8_0") {
        fail(path + ".kv_cache_type",
             "'" + embedded.kv_cache_type + "' is not f16 (the default) or q8_0");
      }
      if (embedded.threads < 0 || embedded.threads > engine::kMaxThreads) {
        fail(path + ".threads",
             "must be 0 (one per core) to " + std::to_string(engine::kMaxThreads));
      }
    }
    if (t.price_input_per_mtok < 0) fail(path + ".price.input_per_mtok", "must not be negative");
    if (t.price_output_per_mtok < 0) fail(path + ".price.output_per_mtok", "must not be negative");
    if (t.max_concurrency < 1) fail(path + ".max_concurrency", "must be at least 1");
    if (t.max_queue < 0) fail(path + ".max_queue", "must be 0 or more");
  }
  for (const auto& [tier, limits] : config.limits.per_tier) {
    if (!names.contains(tier)) fail("limits.tiers." + tier, "is not a tier defined under tiers");
  }
  if (!s.default_tier.empty() && !names.contains(s.default_tier)) {
    fail("server.default_tier", "'" + s.default_tier + "' is not a tier defined under tiers");
  }
  std::set<std::string> aliases;
  for (const auto& m : config.models) {
    const std::string path = "models." + m.name;
    if (m.name.empty()) fail("models", "an alias name is empty");
    if (!aliases.insert(m.name).second) fail(path, "is defined twice");
    if (!names.contains(m.tier)) {
      fail(path, "'" + m.tier + "' is not a tier defined under tiers");
    } else if (names.contains(m.name) && m.name != m.tier) {
      fail(path, "is also the name of another tier");
    }
    std::set<std::string> chain = {m.tier};
    for (const auto& f : m.fallback) {
      if (!names.contains(f))
        fail(path + ".fallback", "'" + f + "' is not a tier defined under tiers");
      if (!chain.insert(f).second)
        fail(path + ".fallback", "'" + f + "' appears twice in the chain");
    }
  }
  return to_status(errors);
}

std::vector<std::string> config_keys() {
  std::vector<std::string> keys;
  const auto add = [&](const std::string& prefix, std::span<const std::string_view> list) {
    for (std::string_view k : list) keys.push_back(prefix + std::string(k));
  };
  add("", kTopKeys);
  add("server.", kServerKeys);
  add("tiers.NAME.", kTierKeys);
  add("tiers.NAME.price.", kPriceKeys);
  add("tiers.NAME.timeouts.", kTimeoutKeys);
  keys.emplace_back("models.NAME");
  add("models.NAME.", kAliasKeys);
  add("state.", kStateKeys);
  add("limits.", kLimitKeys);
  keys.emplace_back("limits.tiers");
  add("limits.tiers.NAME.", kLimitKeys);
  keys.emplace_back("limits.teams");
  add("limits.teams.NAME.", kLimitKeys);
  for (const auto& k : router_config_keys()) keys.push_back("routing." + k);
  for (const auto& k : sensitivity_config_keys()) keys.push_back("privacy." + k);
  return keys;
}

Result<GatewayConfig> parse_config(std::string_view yaml, std::string_view source) {
  GatewayConfig config;
  config.source = std::string(source);
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    return make_error(
        ErrorKind::kInvalidArgument,
        config.source + ":" + std::to_string(e.mark.line + 1) + ": not valid YAML: " + e.msg);
  }
  YamlReader r(source);
  if (!root || root.IsNull()) {
    r.fail("(top level)", "the file is empty; it needs at least a tiers: section");
    return to_status(r.errors()).error();
  }
  if (!root.IsMap()) {
    r.fail("(top level)", "expected a map with server:, tiers:, models:, routing: and privacy:");
    return to_status(r.errors()).error();
  }
  r.check_keys(root, "", kTopKeys);
  if (const YAML::Node server = root["server"]) read_server(r, server, config.server);
  if (const YAML::Node tiers = root["tiers"]) {
    if (r.expect_map(tiers, "tiers")) {
      for (const auto& kv : tiers) {
        backend::TierConfig tier;
        tier.name = kv.first.Scalar();
        read_tier(r, kv.second, "tiers." + tier.name, tier);
        config.tiers.push_back(std::move(tier));
      }
    }
  }
  if (const YAML::Node models = root["models"]) {
    if (r.expect_map(models, "models")) {
      for (const auto& kv : models) {
        ModelAlias alias{kv.first.Scalar(), "", {}};
        const std::string path = "models." + alias.name;
        if (kv.second.IsScalar()) {
          alias.tier = kv.second.Scalar();
        } else if (kv.second.IsMap()) {
          r.check_keys(kv.second, path, kAliasKeys);
          r.get(kv.second, "tier", path, alias.tier);
          r.get_string_list(kv.second, "fallback", path, alias.fallback);
          if (alias.tier.empty()) r.fail(join_path(path, "tier"), "is required");
        } else {
          r.fail(path, "expected a tier name or {tier: NAME, fallback: [NAMES]}, got " +
                           scalar_text(kv.second));
        }
        config.models.push_back(std::move(alias));
      }
    }
  }
  if (const YAML::Node state = root["state"]) read_state(r, state, config.state);
  if (const YAML::Node limits = root["limits"]) read_limits(r, limits, config.limits);
  read_api_keys_env(r, config.server);
  std::vector<std::string> errors = r.errors();
  config.routing_configured = static_cast<bool>(root["routing"]);
  if (auto routing = router_config_from_yaml(root["routing"], source); routing.ok()) {
    config.routing = std::move(routing).value();
  } else {
    errors.push_back(routing.error().message);
  }
  if (const YAML::Node privacy = root["privacy"]) {
    if (auto read = sensitivity_config_from_yaml(privacy, source); read.ok()) {
      config.routing.privacy = std::move(read).value();
    } else {
      errors.push_back(read.error().message);
    }
  }
  if (!errors.empty()) return to_status(errors).error();
  FSH_TRY_STATUS(validate_config(config));
  return config;
}

Result<GatewayConfig> load_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return make_error(ErrorKind::kNotFound, path + ": cannot open the config file");
  }
  std::ostringstream text;
  text << in.rdbuf();
  return parse_config(text.str(), path);
}

Result<GatewayConfig> config_from_flags(const FlagConfig& flags) {
  GatewayConfig config;
  config.source = "command line";
  if (flags.model.empty() && flags.upstream.empty()) {
    return make_error(ErrorKind::kInvalidArgument,
                      "nothing to serve: give --config FILE, -m MODEL, or --upstream URL "
                      "--upstream-model NAME");
  }
  if (!flags.model.empty()) {
    backend::TierConfig edge;
    edge.name = "edge";
    edge.placement = backend::Placement::kDevice;
    edge.model = flags.model;
    auto& settings = edge.settings.emplace<backend::EmbeddedTierSettings>();
    settings.context_length = flags.context_length;
    settings.threads = flags.threads;
    config.tiers.push_back(std::move(edge));
  }
  if (flags.upstream.empty() &&
      (!flags.upstream_model.empty() || !flags.upstream_api_key_env.empty())) {
    // Without the endpoint there is no cloud tier for them to describe.
    return make_error(
        ErrorKind::kInvalidArgument,
        std::string(flags.upstream_model.empty() ? "--upstream-key-env" : "--upstream-model") +
            " needs --upstream URL: the OpenAI-compatible endpoint of the cloud "
            "tier (e.g. https://api.openai.com/v1)");
  }
  if (!flags.upstream.empty()) {
    if (flags.upstream_model.empty()) {
      return make_error(ErrorKind::kInvalidArgument,
                        "--upstream needs --upstream-model NAME: the model id to ask it for");
    }
    backend::TierConfig cloud;
    cloud.name = "cloud";
    cloud.placement = backend::Placement::kCloud;
    cloud.model = flags.upstream_model;
    auto& settings = cloud.settings.emplace<backend::OpenAiTierSettings>();
    settings.endpoint = flags.upstream;
    settings.api_key_env = flags.upstream_api_key_env;
    config.tiers.push_back(std::move(cloud));
  }
  config.server.api_keys_env = flags.api_keys_env;
  YamlReader r(config.source);
  read_api_keys_env(r, config.server);
  if (!r.errors().empty()) return to_status(r.errors()).error();
  FSH_TRY_STATUS(validate_config(config));
  return config;
}

}  // namespace foreshore::config
