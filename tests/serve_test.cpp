// The gateway in process: configuration, OpenAI request parsing, error shapes,
// and the HTTP server over fake tiers whose timing and failures tests control.
#include "serve/serve.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "serve/hybrid.h"
#include "serve/virtual_keys.h"
#include "support/process.h"
#include "support/test_paths.h"

namespace foreshore::serve {
namespace {

using namespace std::chrono_literals;
using foreshore::testing::http_get;
using foreshore::testing::http_post;
using foreshore::testing::sse_data;
using nlohmann::json;

// ---------------------------------------------------------------- config

std::string config_error(const std::string& yaml) {
  auto c = config::parse_config(yaml, "cfg.yaml");
  return c.ok() ? std::string("(no error)") : c.error().message;
}

TEST(ConfigTest, MinimalFileTakesDefaults) {
  auto c = config::parse_config("tiers:\n  edge:\n    model: stories260K\n", "cfg.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->server.host, "127.0.0.1");
  EXPECT_EQ(c->server.port, 8080);
  EXPECT_EQ(c->server.max_body_bytes, 4u << 20);
  ASSERT_EQ(c->tiers.size(), 1u);
  EXPECT_EQ(c->tiers[0].name, "edge");
  EXPECT_EQ(c->tiers[0].kind(), "embedded");
  EXPECT_EQ(c->tiers[0].placement, backend::Placement::kDevice);
}

TEST(ConfigTest, FullFileReadsEveryField) {
  setenv("FSH_SERVE_TEST_UPSTREAM_KEY", "sk-up", 1);
  auto c = config::parse_config(R"(
server:
  host: 0.0.0.0
  port: 9000
  api_keys: [k1, k2]
  max_body_bytes: 65536
  max_concurrent_requests: 3
  request_timeout_ms: 1500
  default_tier: cloud
  worker_threads: 6
  log_requests: false
tiers:
  edge:
    kind: embedded
    placement: device
    model: stories260K
    max_concurrency: 2
    max_queue: 5
    context_length: 256
    kv_memory_mb: 64
    threads: 1
    chat_format: chatml
    price: {input_per_mtok: 0, output_per_mtok: 0}
  cloud:
    kind: openai
    model: gpt-4o-mini
    endpoint: https://api.openai.com/v1
    api_key_env: FSH_SERVE_TEST_UPSTREAM_KEY
    price: {input_per_mtok: 0.15, output_per_mtok: 0.6}
    timeouts: {connect_ms: 100, first_byte_ms: 200, total_ms: 300}
    verify_tls: false
models:
  gpt-4o: cloud
  small: edge
)",
                                "cfg.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->server.host, "0.0.0.0");
  EXPECT_EQ(c->server.port, 9000);
  EXPECT_EQ(c->server.api_keys, (std::vector<std::string>{"k1", "k2"}));
  EXPECT_EQ(c->server.max_body_bytes, 65536u);
  EXPECT_EQ(c->server.max_concurrent_requests, 3);
  EXPECT_EQ(c->server.request_timeout_ms, 1500);
  EXPECT_EQ(c->server.default_tier, "cloud");
  EXPECT_EQ(c->server.worker_threads, 6);
  EXPECT_FALSE(c->server.log_requests);
  ASSERT_EQ(c->tiers.size(), 2u);
  const auto& edge = c->tiers[0];
  EXPECT_EQ(edge.max_concurrency, 2);
  EXPECT_EQ(edge.max_queue, 5);
  ASSERT_NE(edge.embedded(), nullptr);
  EXPECT_EQ(edge.embedded()->context_length, 256);
  EXPECT_EQ(edge.embedded()->kv_memory_mb, 64);
  EXPECT_EQ(edge.embedded()->threads, 1);
  EXPECT_EQ(edge.embedded()->chat_format, "chatml");
  const auto& cloud = c->tiers[1];
  EXPECT_EQ(cloud.name, "cloud");
  EXPECT_EQ(cloud.placement, backend::Placement::kCloud);
  ASSERT_NE(cloud.openai(), nullptr);
  EXPECT_EQ(cloud.openai()->endpoint, "https://api.openai.com/v1");
  EXPECT_DOUBLE_EQ(cloud.price_input_per_mtok, 0.15);
  EXPECT_DOUBLE_EQ(cloud.price_output_per_mtok, 0.6);
  EXPECT_EQ(cloud.openai()->connect_timeout_ms, 100);
  EXPECT_EQ(cloud.openai()->first_byte_timeout_ms, 200);
  EXPECT_EQ(cloud.openai()->total_timeout_ms, 300);
  EXPECT_FALSE(cloud.openai()->verify_tls);
  ASSERT_EQ(c->models.size(), 2u);
  EXPECT_EQ(c->models[0].name, "gpt-4o");
  EXPECT_EQ(c->models[0].tier, "cloud");
}

TEST(ConfigTest, ErrorsNameTheKeyPath) {
  EXPECT_EQ(config_error("tiers:\n  cloud:\n    kind: openai\n    model: m\n"
                         "    endpoint: htp://x\n"),
            "cfg.yaml: tiers.cloud.endpoint: 'htp://x' is not an http(s) URL");
  EXPECT_EQ(config_error("server:\n  port: abc\ntiers:\n  e:\n    model: m\n"),
            "cfg.yaml: server.port: expected an integer, got 'abc'");
  EXPECT_EQ(config_error("server:\n  port: 70000\ntiers:\n  e:\n    model: m\n"),
            "cfg.yaml: server.port: 70000 is not a port (0-65535; 0 picks a free one)");
  EXPECT_EQ(config_error("tiers:\n  e:\n    model: m\n    placement: moon\n"),
            "cfg.yaml: tiers.e.placement: 'moon' is not one of device, cloud");
  EXPECT_EQ(config_error("tiers:\n  e:\n    model: m\n    kind: grpc\n"),
            "cfg.yaml: tiers.e.kind: 'grpc' is not one of embedded, openai");
  EXPECT_EQ(config_error("tiers:\n  e:\n    kind: embedded\n"),
            "cfg.yaml: tiers.e.model: is required: a GGUF path or a model name");
  EXPECT_EQ(config_error("tiers:\n  c:\n    kind: openai\n    model: m\n"),
            "cfg.yaml: tiers.c.endpoint: is required for kind openai (e.g. "
            "https://api.openai.com/v1)");
  EXPECT_EQ(config_error("tiers:\n  c:\n    model: m\n    endpoint: http://x\n"
                         "    timeouts: {connect_ms: 0}\n"),
            "cfg.yaml: tiers.c.timeouts.connect_ms: must be at least 1");
  EXPECT_EQ(config_error("tiers:\n  e:\n    model: m\n    price: {input_per_mtok: -1}\n"),
            "cfg.yaml: tiers.e.price.input_per_mtok: must not be negative");
  EXPECT_EQ(config_error("tiers:\n  e:\n    model: m\n    chat_format: jinja\n"),
            "cfg.yaml: tiers.e.chat_format: 'jinja' is not one of chatml, llama3, llama2, "
            "zephyr, plain, qwen3, gemma, phi3, smollm3");
  EXPECT_EQ(
      config_error("tiers:\n  e:\n    model: m\n    endpoint: http://x\n    kind: embedded\n"),
      "cfg.yaml: tiers.e.endpoint: only applies to kind openai");
  // A key of the other kind would be ignored, so it is refused.
  EXPECT_EQ(config_error("tiers:\n  e:\n    model: m\n    timeouts: {connect_ms: 5}\n"),
            "cfg.yaml: tiers.e.timeouts: only applies to kind openai");
  EXPECT_EQ(config_error("tiers:\n  e:\n    model: m\n    verify_tls: false\n"),
            "cfg.yaml: tiers.e.verify_tls: only applies to kind openai");
  EXPECT_EQ(config_error("tiers:\n  c:\n    model: m\n    endpoint: http://x\n"
                         "    kv_memory_mb: 64\n"),
            "cfg.yaml: tiers.c.kv_memory_mb: only applies to kind embedded");
  EXPECT_EQ(config_error("tiers:\n  c:\n    kind: openai\n    model: m\n"
                         "    endpoint: http://x\n    chat_format: chatml\n"),
            "cfg.yaml: tiers.c.chat_format: only applies to kind embedded");
  EXPECT_EQ(config_error("server:\n  default_tier: big\ntiers:\n  e:\n    model: m\n"),
            "cfg.yaml: server.default_tier: 'big' is not a tier defined under tiers");
  EXPECT_EQ(config_error("tiers:\n  e:\n    model: m\nmodels:\n  gpt: nowhere\n"),
            "cfg.yaml: models.gpt: 'nowhere' is not a tier defined under tiers");
  EXPECT_EQ(config_error("tiers:\n  'bad name':\n    model: m\n"),
            "cfg.yaml: tiers.bad name: tier names use only letters, digits, '-', '_' and '.'");
  EXPECT_EQ(config_error("server:\n  host: 127.0.0.1\n"),
            "cfg.yaml: tiers: at least one tier is required (an embedded model or an OpenAI "
            "endpoint)");
  EXPECT_EQ(config_error("tiers: [a, b]\n"), "cfg.yaml: tiers: expected a map of keys, got a list");
  EXPECT_EQ(config_error("server:\n  api_keys: key\ntiers:\n  e:\n    model: m\n"),
            "cfg.yaml: server.api_keys: expected a list of strings, got 'key'");
}

TEST(ConfigTest, StateAndLimitsAreReadAndChecked) {
  auto c = config::parse_config(
      "tiers: {e: {model: m}, c: {endpoint: 'http://h/v1', model: x}}\n"
      "state: {backend: redis, url: 'redis://10.0.0.2:6380', pool_size: 4, "
      "budgets_when_down: closed}\n"
      "limits: {requests_per_minute: 60, budget_usd: 2.5, tiers: {c: {tokens_per_minute: 1000}}, "
      "teams: {research: {budget_usd: 40}}}\n",
      "cfg.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->state.backend, "redis");
  EXPECT_EQ(c->state.pool_size, 4);
  EXPECT_FALSE(c->state.budgets_fail_open);
  EXPECT_EQ(c->limits.per_key.requests_per_minute, 60);
  EXPECT_DOUBLE_EQ(c->limits.per_key.budget_usd, 2.5);
  EXPECT_EQ(c->limits.per_tier.at("c").tokens_per_minute, 1000);
  EXPECT_DOUBLE_EQ(c->limits.per_team.at("research").budget_usd, 40);
  const std::string tiers = "tiers: {e: {model: m}}\n";
  EXPECT_EQ(config_error(tiers + "state: {backend: etcd}\n"),
            "cfg.yaml: state.backend: 'etcd' is not one of local, redis");
  EXPECT_EQ(config_error(tiers + "state: {backend: redis}\n"),
            "cfg.yaml: state.url: is required with backend redis (redis://HOST:PORT)");
  EXPECT_NE(config_error(tiers + "state: {backend: redis, url: 'redis://h:0'}\n")
                .find("has a port that is not 1-65535"),
            std::string::npos);
  EXPECT_EQ(config_error(tiers + "state: {budgets_when_down: maybe}\n"),
            "cfg.yaml: state.budgets_when_down: 'maybe' is not one of open, closed");
  EXPECT_NE(config_error(tiers + "limits: {rpm: 5}\n").find("cfg.yaml: limits.rpm: is not a key"),
            std::string::npos);
  EXPECT_EQ(config_error(tiers + "limits: {budget_usd: -1}\n"),
            "cfg.yaml: limits.budget_usd: must be 0 (none) or more");
  EXPECT_EQ(config_error(tiers + "limits: {tiers: {x: {budget_usd: 1}}}\n"),
            "cfg.yaml: limits.tiers.x: is not a tier defined under tiers");
}

TEST(ConfigTest, UnknownKeysAreErrors) {
  EXPECT_EQ(config_error("tiers:\n  e:\n    modle: m\n    model: m\n"),
            "cfg.yaml: tiers.e.modle: unknown key (allowed here: kind, placement, model, "
            "endpoint, api_key_env, price, max_concurrency, max_queue, context_length, "
            "kv_memory_mb, threads, chat_format, timeouts, verify_tls, ca_file, low_memory_model)");
  EXPECT_NE(config_error("servr:\n  port: 1\ntiers:\n  e:\n    model: m\n")
                .find("cfg.yaml: servr: unknown key (allowed here: server, tiers, models, routing, "
                      "privacy, state, limits)"),
            std::string::npos);
  EXPECT_NE(config_error("server:\n  prot: 1\ntiers:\n  e:\n    model: m\n")
                .find("cfg.yaml: server.prot: unknown key"),
            std::string::npos);
  EXPECT_NE(config_error("tiers:\n  e:\n    model: m\n    price: {input: 1}\n")
                .find("cfg.yaml: tiers.e.price.input: unknown key"),
            std::string::npos);
  EXPECT_NE(config_error("tiers:\n  c:\n    model: m\n    endpoint: http://x\n"
                         "    timeouts: {total: 1}\n")
                .find("cfg.yaml: tiers.c.timeouts.total: unknown key"),
            std::string::npos);
}

TEST(ConfigTest, OperationalKeys) {
  const std::string small = foreshore::testing::shared_models_dir() + "/llama-2-tiny-random.gguf";
  auto c = config::parse_config(
      "server:\n  memory_pressure_interval_ms: 100\n  shutdown_timeout_ms: 5000\n"
      "  shadow_target_agreement: 0.85\n  audit_max_rows: 1000\n  audit_max_age_hours: 48\n"
      "  worker_idle_timeout_ms: 2500\n"
      "tiers:\n  edge:\n    model: stories260K\n    low_memory_model: " +
          small + "\n",
      "cfg.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->server.memory_pressure_interval_ms, 100);
  EXPECT_EQ(c->server.shutdown_timeout_ms, 5000);
  EXPECT_DOUBLE_EQ(c->server.shadow_target_agreement, 0.85);
  EXPECT_EQ(c->server.audit_max_rows, 1000);
  EXPECT_EQ(c->server.audit_max_age_hours, 48);
  EXPECT_EQ(c->server.worker_idle_timeout_ms, 2500);
  EXPECT_EQ(config_error("server:\n  worker_idle_timeout_ms: 0\ntiers:\n  e:\n    model: m\n"),
            "cfg.yaml: server.worker_idle_timeout_ms: must be at least 1");
  ASSERT_NE(c->tiers[0].embedded(), nullptr);
  EXPECT_EQ(c->tiers[0].embedded()->low_memory_model, small);
  // The low-memory model must exist when the configuration is read.
  EXPECT_NE(config_error("tiers:\n  edge:\n    model: m\n    low_memory_model: no-such\n")
                .find("tiers.edge.low_memory_model: model 'no-such' not found"),
            std::string::npos);
  EXPECT_NE(config_error("server:\n  shutdown_timeout_ms: -1\ntiers:\n  e:\n    model: m\n")
                .find("server.shutdown_timeout_ms: must be 0"),
            std::string::npos);
}

TEST(ConfigTest, ModelAliasWithFallbackChain) {
  auto c = config::parse_config(
      "tiers:\n  edge:\n    model: m\n  cloud:\n    endpoint: http://x/v1\n    model: c\n"
      "models:\n  fast: edge\n  smart: {tier: cloud, fallback: [edge]}\n",
      "cfg.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  ASSERT_EQ(c->models.size(), 2u);
  EXPECT_EQ(c->models[1].tier, "cloud");
  EXPECT_EQ(c->models[1].fallback, std::vector<std::string>{"edge"});
  EXPECT_TRUE(config::validate_config(*c).ok());
  c->models[1].fallback = {"edge", "nowhere", "edge"};
  auto v = config::validate_config(*c);
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.error().message.find("models.smart.fallback: 'nowhere' is not a tier"),
            std::string::npos)
      << v.error().message;
  EXPECT_NE(v.error().message.find("'edge' appears twice"), std::string::npos) << v.error().message;
}

TEST(ConfigTest, ReportsEveryProblemAtOnce) {
  const std::string e = config_error(
      "server:\n  port: -1\n  max_concurrent_requests: 0\n"
      "tiers:\n  c:\n    kind: openai\n    model: m\n    endpoint: ftp://x\n");
  EXPECT_NE(e.find("cfg.yaml: server.port:"), std::string::npos) << e;
  EXPECT_NE(e.find("cfg.yaml: server.max_concurrent_requests: must be at least 1"),
            std::string::npos)
      << e;
  EXPECT_NE(e.find("cfg.yaml: tiers.c.endpoint: 'ftp://x' is not an http(s) URL"),
            std::string::npos)
      << e;
}

TEST(ConfigTest, InvalidYamlSaysWhere) {
  const std::string e = config_error("tiers:\n  e: [unclosed\n");
  EXPECT_EQ(e.rfind("cfg.yaml:", 0), 0u) << e;
  EXPECT_NE(e.find("not valid YAML"), std::string::npos) << e;
}

TEST(ConfigTest, ApiKeysFromEnvironment) {
  setenv("FSH_SERVE_TEST_KEYS", "a1, b2 ,c3", 1);
  auto c = config::parse_config(
      "server:\n  api_keys: [k0]\n  api_keys_env: FSH_SERVE_TEST_KEYS\n"
      "tiers:\n  e:\n    model: m\n",
      "cfg.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->server.api_keys, (std::vector<std::string>{"k0", "a1", "b2", "c3"}));
  unsetenv("FSH_SERVE_TEST_KEYS_MISSING");
  EXPECT_EQ(config_error("server:\n  api_keys_env: FSH_SERVE_TEST_KEYS_MISSING\n"
                         "tiers:\n  e:\n    model: m\n"),
            "cfg.yaml: server.api_keys_env: environment variable FSH_SERVE_TEST_KEYS_MISSING "
            "is not set or holds no keys");
  EXPECT_EQ(config_error("tiers:\n  c:\n    model: m\n    endpoint: http://h/v1\n"
                         "    api_key_env: FSH_SERVE_TEST_KEYS_MISSING\n"),
            "cfg.yaml: tiers.c.api_key_env: environment variable FSH_SERVE_TEST_KEYS_MISSING is "
            "not set");
}

TEST(ConfigTest, FromFlags) {
  config::FlagConfig f;
  f.model = "stories260K";
  auto c = config::config_from_flags(f);
  ASSERT_TRUE(c.ok()) << c.error().message;
  ASSERT_EQ(c->tiers.size(), 1u);
  EXPECT_EQ(c->tiers[0].name, "edge");
  EXPECT_EQ(c->tiers[0].kind(), "embedded");

  f.upstream = "http://127.0.0.1:9/v1";
  EXPECT_FALSE(config::config_from_flags(f).ok());  // no --upstream-model
  f.upstream_model = "big";
  c = config::config_from_flags(f);
  ASSERT_TRUE(c.ok()) << c.error().message;
  ASSERT_EQ(c->tiers.size(), 2u);
  EXPECT_EQ(c->tiers[1].name, "cloud");
  EXPECT_EQ(c->tiers[1].placement, backend::Placement::kCloud);
  ASSERT_NE(c->tiers[1].openai(), nullptr);
  EXPECT_EQ(c->tiers[1].openai()->endpoint, "http://127.0.0.1:9/v1");

  f.upstream = "htp://x";
  auto bad = config::config_from_flags(f);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().message,
            "command line: tiers.cloud.endpoint: 'htp://x' is not an http(s) URL");
  EXPECT_FALSE(config::config_from_flags(config::FlagConfig{}).ok());
}

TEST(ConfigTest, RoutingAndPrivacySectionsAreCheckedAndKept) {
  auto c = config::load_config(std::string(FSH_SOURCE_DIR) + "/examples/gateway.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_TRUE(c->routing.IsMap());
  EXPECT_TRUE(c->privacy.IsMap());
  const std::string e = config_error("tiers:\n  e:\n    model: m\nrouting:\n  polcy: edge\n");
  EXPECT_NE(e.find("cfg.yaml: routing.polcy"), std::string::npos) << e;
}

// docs/CONFIG.md documents exactly the keys the parser accepts: its table
// rows whose first cell is a key (`server.host`) against config::config_keys().
TEST(ConfigTest, ReferenceDocumentsExactlyTheParsersKeys) {
  std::ifstream in(std::string(FSH_SOURCE_DIR) + "/docs/CONFIG.md");
  ASSERT_TRUE(in) << "docs/CONFIG.md is missing";
  std::set<std::string> documented;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.starts_with("| `")) continue;
    const std::string key = line.substr(3, line.find('`', 3) - 3);
    // Environment variables (FORESHORE_...) have a table of their own.
    if (!key.empty() && std::islower(static_cast<unsigned char>(key[0]))) documented.insert(key);
  }
  const std::vector<std::string> keys = config::config_keys();
  const std::set<std::string> accepted(keys.begin(), keys.end());
  EXPECT_EQ(accepted.size(), keys.size()) << "config::config_keys() lists a key twice";
  for (const auto& k : accepted) {
    EXPECT_TRUE(documented.contains(k)) << "accepted but not in docs/CONFIG.md: " << k;
  }
  for (const auto& k : documented) {
    EXPECT_TRUE(accepted.contains(k)) << "in docs/CONFIG.md but not accepted: " << k;
  }
}

// A key listed as accepted is read, not refused: the lists config::config_keys()
// reports are the ones the parser checks against.
TEST(ConfigTest, EveryListedRoutingKeyIsAccepted) {
  const std::string yaml =
      "tiers: {e: {kind: embedded, model: m.gguf}}\n"
      "routing:\n"
      "  policy: cascade\n  edge_tier: e\n  cloud_tier: e\n  complexity_model: none\n"
      "  threshold: 0.5\n  default_max_tokens: 64\n"
      "  cascade: {min_mean_logprob: -1, min_token_logprob: -5, max_mean_entropy: 2,"
      " hold_back_tokens: 4}\n"
      "  consistency: {min_similarity: 0.4}\n"
      "  optimize: {cost_weight: 10, latency_weight: 0.001}\n"
      "  learning: {enabled: false, state: learner.json, target_cloud_share: 0.3,"
      " save_every_labels: 10}\n";
  EXPECT_EQ(config_error(yaml), "(no error)");
  size_t routing_keys = 0;
  for (const auto& k : config::config_keys()) routing_keys += k.starts_with("routing.");
  EXPECT_EQ(routing_keys, 21u) << "a routing key was added: add it to this file above too";
}

TEST(ConfigTest, LoadConfigMissingFile) {
  auto c = config::load_config("/nonexistent/foreshore.yaml");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().kind, ErrorKind::kNotFound);
}

// ---------------------------------------------------------------- requests

std::optional<ApiError> parse_chat(const json& body, ApiRequest& out) {
  return parse_request(ApiKind::kChat, body.dump(), out);
}

json chat_body() {
  return {{"messages", {{{"role", "user"}, {"content", "hi"}}}}};
}

TEST(RequestTest, ParsesEveryParameter) {
  json b = chat_body();
  b["model"] = "m";
  b["messages"] = json::array({{{"role", "developer"}, {"content", "be brief"}},
                               {{"role", "user"},
                                {"content", json::array({{{"type", "text"}, {"text", "a"}},
                                                         {{"type", "text"}, {"text", "b"}}})}},
                               {{"role", "assistant"}, {"content", nullptr}}});
  b["stream"] = true;
  b["stream_options"] = {{"include_usage", true}};
  b["max_tokens"] = 10;
  b["max_completion_tokens"] = 12;
  b["temperature"] = 0.5;
  b["top_p"] = 0.9;
  b["top_k"] = 40;
  b["min_p"] = 0.05;
  b["presence_penalty"] = 0.1;
  b["frequency_penalty"] = -0.1;
  b["seed"] = 7;
  b["stop"] = {"\n", "END"};
  b["n"] = 1;
  b["logprobs"] = true;
  b["top_logprobs"] = 3;
  b["user"] = "ignored";
  ApiRequest r;
  auto e = parse_chat(b, r);
  ASSERT_FALSE(e) << e->message;
  EXPECT_EQ(r.model, "m");
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  ASSERT_EQ(r.backend.messages.size(), 3u);
  EXPECT_EQ(r.backend.messages[0].role, "system");
  EXPECT_EQ(r.backend.messages[1].content, "ab");
  EXPECT_EQ(r.backend.messages[2].content, "");
  const auto& p = r.backend.params;
  EXPECT_EQ(p.max_tokens, 12);
  EXPECT_FLOAT_EQ(*p.temperature, 0.5f);
  EXPECT_FLOAT_EQ(*p.top_p, 0.9f);
  EXPECT_EQ(p.top_k, 40);
  EXPECT_FLOAT_EQ(*p.min_p, 0.05f);
  EXPECT_FLOAT_EQ(*p.presence_penalty, 0.1f);
  EXPECT_FLOAT_EQ(*p.frequency_penalty, -0.1f);
  EXPECT_EQ(p.seed, 7u);
  EXPECT_EQ(p.stop, (std::vector<std::string>{"\n", "END"}));
  EXPECT_TRUE(p.logprobs);
  EXPECT_EQ(p.top_logprobs, 3);
}

TEST(RequestTest, NullMeansUnset) {
  json b = chat_body();
  b["temperature"] = nullptr;
  b["stop"] = nullptr;
  b["max_tokens"] = nullptr;
  ApiRequest r;
  ASSERT_FALSE(parse_chat(b, r));
  EXPECT_FALSE(r.backend.params.temperature);
  EXPECT_FALSE(r.backend.params.max_tokens);
  EXPECT_TRUE(r.backend.params.stop.empty());
}

void expect_400(const json& b, const std::string& param, const std::string& message_part) {
  ApiRequest r;
  auto e = parse_chat(b, r);
  ASSERT_TRUE(e) << b.dump();
  EXPECT_EQ(e->status, 400);
  EXPECT_EQ(e->type, "invalid_request_error");
  EXPECT_EQ(e->param, param);
  EXPECT_NE(e->message.find(message_part), std::string::npos) << e->message;
}

TEST(RequestTest, RejectsBadFieldsNamingThem) {
  auto with = [](const char* key, json v) {
    json b = chat_body();
    b[key] = std::move(v);
    return b;
  };
  expect_400(with("n", 129), "n", "'n' must be between 1 and 128 (got 129)");
  expect_400(with("temperature", 3), "temperature", "between 0 and 2 (got 3)");
  expect_400(with("temperature", "hot"), "temperature", "must be a number");
  expect_400(with("top_p", 1.5), "top_p", "between 0 and 1");
  expect_400(with("max_tokens", 0), "max_tokens", "between 1 and");
  expect_400(with("max_tokens", 1.5), "max_tokens", "must be an integer");
  expect_400(with("presence_penalty", -3), "presence_penalty", "between -2 and 2");
  expect_400(with("stop", 5), "stop", "string or a list");
  expect_400(with("stream", "yes"), "stream", "true or false");
  expect_400(with("top_logprobs", 2), "top_logprobs", "needs 'logprobs': true");
  expect_400(with("top_logprobs", 21), "top_logprobs", "between 0 and 20");
  expect_400(with("model", 5), "model", "must be a string");
  expect_400(with("stream_options", 1), "stream_options", "must be an object");
  expect_400(with("messages", json::array()), "messages", "non-empty list");
  expect_400(with("messages", json::array({{{"role", "robot"}, {"content", "x"}}})),
             "messages[0].role", "must be one of");
  expect_400(
      with("messages",
           json::array({{{"role", "user"}, {"content", json::array({{{"image_url", "x"}}})}}})),
      "messages[0].content", "list of parts");
  expect_400(with("tool_choice", "auto"), "tool_choice", "only allowed when 'tools'");
  json no_messages = chat_body();
  no_messages.erase("messages");
  expect_400(no_messages, "messages", "'messages' is required");
}

// What only a remote tier reads is kept for it, and what the edge would
// ignore or could not honour is named.
TEST(RequestTest, KeepsWhatOnlyRemoteTiersRead) {
  json b = chat_body();
  b["messages"] = json::array(
      {{{"role", "user"},
        {"content",
         json::array({{{"type", "text"}, {"text", "look: "}},
                      {{"type", "image_url"}, {"image_url", {{"url", "https://x/y.png"}}}},
                      {{"type", "text"}, {"text", "what is it"}}})}}});
  b["logit_bias"] = {{"50256", -100}};
  b["user"] = "u1";
  ApiRequest r;
  ASSERT_FALSE(parse_chat(b, r));
  const backend::ChatMessage& m = r.backend.messages[0];
  EXPECT_EQ(m.content, "look: what is it");
  EXPECT_EQ(json::parse(m.content_parts.text()), b["messages"][0]["content"]);
  const backend::RemoteOnlyFields& f = r.backend.remote_only;
  EXPECT_EQ(f.edge_unsupported, "image_url content");
  EXPECT_EQ(json::parse(f.other.text()), json({{"logit_bias", b["logit_bias"]}, {"user", "u1"}}));
  EXPECT_EQ(f.edge_ignored, "logit_bias");

  // metadata goes on without the gateway's own data_class hint.
  json meta = chat_body();
  meta["metadata"] = {{"data_class", "public"}, {"run", "eval-7"}};
  ApiRequest m1;
  ASSERT_FALSE(parse_chat(meta, m1));
  EXPECT_EQ(m1.data_class, "public");
  EXPECT_EQ(json::parse(m1.backend.remote_only.other.text()),
            json({{"metadata", {{"run", "eval-7"}}}}));
  EXPECT_EQ(m1.backend.remote_only.edge_ignored, "");
  meta["metadata"] = {{"data_class", "public"}};
  ApiRequest m2;
  ASSERT_FALSE(parse_chat(meta, m2));
  EXPECT_TRUE(m2.backend.remote_only.other.empty());

  json tools = chat_body();
  tools["tools"] = json::array({{{"type", "function"}, {"function", {{"name", "f"}}}}});
  ApiRequest t;
  ASSERT_FALSE(parse_chat(tools, t));
  EXPECT_EQ(t.backend.remote_only.edge_unsupported, "tools");
  EXPECT_TRUE(t.backend.messages[0].content_parts.empty());
  tools["tool_choice"] = "none";
  tools["response_format"] = {{"type", "text"}};
  ApiRequest none;
  ASSERT_FALSE(parse_chat(tools, none));
  EXPECT_EQ(none.backend.remote_only.edge_unsupported, "");
  EXPECT_EQ(none.backend.remote_only.edge_ignored, "tools");
  tools["response_format"] = {{"type", "json_schema"}, {"json_schema", {{"name", "s"}}}};
  ApiRequest schema;
  ASSERT_FALSE(parse_chat(tools, schema));
  EXPECT_EQ(schema.backend.remote_only.edge_unsupported, "response_format json_schema");
}

// chat_template_kwargs: the edge honours enable_thinking; remote tiers get
// the object as sent; options the edge ignores are named.
TEST(RequestTest, ChatTemplateKwargsEnableThinking) {
  json b = chat_body();
  b["chat_template_kwargs"] = {{"enable_thinking", false}, {"custom", 1}};
  ApiRequest r;
  ASSERT_FALSE(parse_chat(b, r));
  EXPECT_EQ(r.backend.params.enable_thinking, false);
  EXPECT_EQ(json::parse(r.backend.remote_only.other.text())["chat_template_kwargs"],
            b["chat_template_kwargs"]);
  EXPECT_EQ(r.backend.remote_only.edge_ignored, "chat_template_kwargs.custom");

  b["chat_template_kwargs"] = {{"enable_thinking", true}};
  ApiRequest on;
  ASSERT_FALSE(parse_chat(b, on));
  EXPECT_EQ(on.backend.params.enable_thinking, true);
  EXPECT_EQ(on.backend.remote_only.edge_ignored, "");

  ApiRequest unset;
  ASSERT_FALSE(parse_chat(chat_body(), unset));
  EXPECT_FALSE(unset.backend.params.enable_thinking.has_value());

  b["chat_template_kwargs"] = {{"enable_thinking", "no"}};
  expect_400(b, "chat_template_kwargs.enable_thinking", "must be true or false");
  b["chat_template_kwargs"] = "off";
  expect_400(b, "chat_template_kwargs", "must be an object");
}

TEST(RequestTest, MalformedBody) {
  ApiRequest r;
  auto e = parse_request(ApiKind::kChat, "{not json", r);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->status, 400);
  EXPECT_TRUE(e->param.empty());
  e = parse_request(ApiKind::kChat, "[1,2]", r);
  ASSERT_TRUE(e);
  EXPECT_NE(e->message.find("JSON object"), std::string::npos);
}

TEST(RequestTest, LegacyCompletions) {
  ApiRequest r;
  auto e = parse_request(ApiKind::kCompletion,
                         R"({"model":"m","prompt":"Once","max_tokens":5,"logprobs":2})", r);
  ASSERT_FALSE(e) << e->message;
  EXPECT_EQ(r.backend.prompt, "Once");
  EXPECT_TRUE(r.backend.messages.empty());
  EXPECT_TRUE(r.backend.params.logprobs);
  EXPECT_EQ(r.backend.params.top_logprobs, 2);
  e = parse_request(ApiKind::kCompletion, R"({"prompt":["a","b"]})", r);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->param, "prompt");
  e = parse_request(ApiKind::kCompletion, R"({"model":"m"})", r);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->param, "prompt");
}

TEST(ErrorShapeTest, OpenAiShape) {
  ApiError e = invalid_request("bad \"x\"", "x", "invalid_value");
  json j = json::parse(error_json(e));
  EXPECT_EQ(j["error"]["message"], "bad \"x\"");
  EXPECT_EQ(j["error"]["type"], "invalid_request_error");
  EXPECT_EQ(j["error"]["param"], "x");
  EXPECT_EQ(j["error"]["code"], "invalid_value");
  j = json::parse(error_json(invalid_request("m")));
  EXPECT_TRUE(j["error"]["param"].is_null());
  EXPECT_TRUE(j["error"]["code"].is_null());
}

TEST(ErrorShapeTest, BackendErrorsMapToStatuses) {
  auto map = [](ErrorKind kind, int up, std::string msg = "x", double retry = 0) {
    Error e = make_error(kind, std::move(msg));
    e.upstream_status = up;
    e.retry_after_seconds = retry;
    return from_backend_error(e);
  };
  ApiError e = map(ErrorKind::kResourceExhausted, 429, "slow down", 7);
  EXPECT_EQ(e.status, 429);
  EXPECT_DOUBLE_EQ(e.retry_after_seconds, 7);
  EXPECT_EQ(e.message, "slow down");  // tiers name themselves in their messages
  EXPECT_EQ(map(ErrorKind::kUnavailable, 500).status, 502);
  EXPECT_EQ(map(ErrorKind::kUnavailable, 401).status, 502);
  EXPECT_EQ(map(ErrorKind::kNotFound, 404).status, 502);
  EXPECT_EQ(map(ErrorKind::kInvalidArgument, 400).status, 400);
  EXPECT_EQ(map(ErrorKind::kResourceExhausted, 413).status, 413);
  EXPECT_EQ(map(ErrorKind::kDeadlineExceeded, 0).status, 504);
  EXPECT_EQ(map(ErrorKind::kDeadlineExceeded, 408).status, 504);
  EXPECT_EQ(map(ErrorKind::kCorrupt, 0).status, 502);
  EXPECT_EQ(map(ErrorKind::kUnavailable, 0).status, 503);
  EXPECT_EQ(map(ErrorKind::kResourceExhausted, 0, "busy with 9 requests").status, 429);
  e = map(ErrorKind::kResourceExhausted, 0, "the prompt is 600 tokens but the context holds 512");
  EXPECT_EQ(e.status, 400);
  EXPECT_EQ(e.code, "context_length_exceeded");
}

TEST(JsonTest, EscapesStrings) {
  std::string out;
  append_json_string(out, std::string("a\"b\\c\n\x01\xc3\xa9", 9));
  EXPECT_EQ(out, "\"a\\\"b\\\\c\\n\\u0001\xc3\xa9\"");
  EXPECT_EQ(json::parse(out).get<std::string>(), std::string("a\"b\\c\n\x01\xc3\xa9", 9));
}

// Byte-token models can emit malformed UTF-8; strict JSON clients must
// still parse every answer, with U+FFFD where the bytes were malformed.
TEST(JsonTest, MalformedUtf8BecomesReplacementCharacters) {
  const std::string bad[] = {std::string("a\xff"
                                         "b"),
                             std::string("\xc3"),
                             std::string("\xe2\x82"),
                             std::string("\xed\xa0\x80"),
                             std::string("\xc0\xaf"),
                             std::string("ok \xf0\x9f\x98\x80 \x80")};
  for (const std::string& text : bad) {
    std::string out;
    append_json_string(out, text);
    EXPECT_TRUE(is_valid_utf8(out)) << out;
    const json parsed = json::parse(out, nullptr, false);
    ASSERT_FALSE(parsed.is_discarded()) << out;
    EXPECT_NE(parsed.get<std::string>().find("\xEF\xBF\xBD"), std::string::npos) << out;
  }
  std::string emoji;
  append_json_string(emoji, "\xf0\x9f\x98\x80");
  EXPECT_EQ(emoji, "\"\xf0\x9f\x98\x80\"");
  EXPECT_FALSE(is_valid_utf8("\xff"));
  EXPECT_TRUE(is_valid_utf8("caf\xc3\xa9"));
}

TEST(MetricsTest, RendersPrometheusText) {
  MetricsRegistry m;
  m.counter("t_total", "Things.", {"tier", "status"}, {"edge", "200"}).add(2);
  m.counter("t_total", "Things.", {"tier", "status"}, {"edge", "200"}).add();
  m.histogram("lat_seconds", "Latency.", {"tier"}, {"e\"x"}).observe(0.003);
  const std::string text = m.render();
  EXPECT_NE(text.find("# TYPE t_total counter\n"), std::string::npos) << text;
  EXPECT_NE(text.find("t_total{tier=\"edge\",status=\"200\"} 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("# TYPE lat_seconds histogram\n"), std::string::npos) << text;
  EXPECT_NE(text.find("lat_seconds_bucket{tier=\"e\\\"x\",le=\"0.0025\"} 0\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("lat_seconds_bucket{tier=\"e\\\"x\",le=\"0.005\"} 1\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("lat_seconds_bucket{tier=\"e\\\"x\",le=\"+Inf\"} 1\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("lat_seconds_count{tier=\"e\\\"x\"} 1\n"), std::string::npos) << text;
}

// ---------------------------------------------------------------- server

// A tier whose words, pace and failures the test sets.
class FakeBackend : public backend::Backend {
 public:
  FakeBackend(std::string name, backend::Placement placement, std::string model) {
    info_.name = std::move(name);
    info_.kind = "fake";
    info_.placement = placement;
    info_.model = std::move(model);
    info_.model_version = info_.model + "@v1";
  }
  const backend::BackendInfo& info() const override { return info_; }

  Result<backend::Completion> generate(const backend::BackendRequest& request,
                                       const backend::DeltaSink& on_delta) override {
    calls.fetch_add(1);
    {
      std::lock_guard lock(mu);
      last = request;
    }
    if (fail_before) return *fail_before;
    backend::Completion c;
    c.model = info_.model;
    c.model_version = info_.model_version;
    c.usage.prompt_tokens = 5;
    int produced = 0;
    for (const auto& w : words) {
      for (auto waited = 0ms; waited < delay; waited += 5ms) {
        if (request.cancelled && request.cancelled->load()) break;
        if (request.deadline && std::chrono::steady_clock::now() >= *request.deadline) {
          return make_error(ErrorKind::kDeadlineExceeded, "deadline passed");
        }
        std::this_thread::sleep_for(5ms);
      }
      if (request.cancelled && request.cancelled->load()) {
        saw_cancel.store(true);
        c.finish_reason = "cancelled";
        return c;
      }
      if (fail_after_first && produced == 1) return *fail_after_first;
      backend::Delta d;
      d.text = w;
      d.logprobs.push_back({w, -0.5f, std::nullopt, {{w, -0.5f}, {"x", -2.0f}}});
      if (on_delta && !on_delta(d)) {
        saw_cancel.store(true);
        c.finish_reason = "cancelled";
        return c;
      }
      c.text += w;
      c.logprobs.push_back(d.logprobs[0]);
      ++produced;
    }
    c.usage.completion_tokens = produced;
    c.finish_reason = "stop";
    c.time_to_first_token_ms = 1.0;
    return c;
  }

  std::vector<std::string> words = {"Hello", " world", "!"};
  std::chrono::milliseconds delay{0};
  std::optional<Error> fail_before;
  std::optional<Error> fail_after_first;
  std::atomic<int> calls{0};
  std::atomic<bool> saw_cancel{false};
  std::mutex mu;
  backend::BackendRequest last;

 private:
  backend::BackendInfo info_;
};

// The egress guard's policy counts the class the router found in what it
// let the guard skip, and trusts that scan only if the same detectors made it.
TEST(EgressVerdictTest, CountsTheRoutersClassAndDistrustsAnotherScan) {
  auto c = config::parse_config(
      "tiers:\n  edge:\n    model: tiny-edge\n"
      "  cloud:\n    kind: openai\n    model: big-cloud\n    endpoint: http://127.0.0.1:9/v1\n",
      "test.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  HybridSettings settings;
  auto routing = route::router_config_from_yaml(c->routing, c->source);
  ASSERT_TRUE(routing.ok()) << routing.error().message;
  settings.routing = std::move(routing).value();
  std::map<std::string, std::shared_ptr<backend::Backend>> backends = {
      {"edge", std::make_shared<FakeBackend>("edge", backend::Placement::kDevice, "tiny-edge")},
      {"cloud", std::make_shared<FakeBackend>("cloud", backend::Placement::kCloud, "big-cloud")}};
  MetricsRegistry metrics;
  auto hybrid = HybridRouter::create(settings, c->tiers, backends, metrics);
  ASSERT_TRUE(hybrid.ok()) << hybrid.error().message;
  const HybridRouter& h = **hybrid;
  const std::string_view rest[] = {std::string_view("role: user")};

  EXPECT_EQ(h.egress_verdict("cloud", rest, nullptr), "");
  backend::EgressClearance cleared;
  cleared.scanner = &h.router().sensitivity();
  cleared.rank = static_cast<int32_t>(route::DataClass::kPublic);
  EXPECT_EQ(h.egress_verdict("cloud", rest, &cleared), "");
  cleared.rank = static_cast<int32_t>(route::DataClass::kDeviceOnly);
  EXPECT_NE(h.egress_verdict("cloud", rest, &cleared).find("device-only"), std::string::npos);
  cleared.rank = static_cast<int32_t>(route::DataClass::kPublic);
  cleared.scanner = &cleared;  // detectors other than the ones in force
  EXPECT_NE(h.egress_verdict("cloud", rest, &cleared).find("reloaded"), std::string::npos);
}

class GatewayTest : public ::testing::Test {
 protected:
  void start(const std::string& server_yaml = "") {
    auto c = config::parse_config(server_yaml +
                                      "tiers:\n"
                                      "  edge:\n    model: tiny-edge\n"
                                      "  cloud:\n    kind: openai\n    model: big-cloud\n"
                                      "    endpoint: http://127.0.0.1:9/v1\n"
                                      "models:\n  gpt-4o: cloud\n",
                                  "test.yaml");
    ASSERT_TRUE(c.ok()) << c.error().message;
    c->server.port = 0;
    c->server.log_requests = false;
    edge = std::make_shared<FakeBackend>("edge", backend::Placement::kDevice, "tiny-edge");
    cloud = std::make_shared<FakeBackend>("cloud", backend::Placement::kCloud, "big-cloud");
    gateway = std::make_unique<Gateway>(std::move(c).value());
    auto p = gateway->bind();
    ASSERT_TRUE(p.ok()) << p.error().message;
    port = *p;
    thread = std::thread([this] { gateway->run(); });
    auto loaded = gateway->load_tiers([this](const backend::TierConfig& t) {
      return Result<std::shared_ptr<backend::Backend>>(
          t.name == "edge" ? std::static_pointer_cast<backend::Backend>(edge)
                           : std::static_pointer_cast<backend::Backend>(cloud));
    });
    ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  }

  void TearDown() override {
    if (gateway) gateway->stop();
    if (thread.joinable()) thread.join();
  }

  foreshore::testing::HttpResult chat(json body, httplib::Headers headers = {}) {
    return http_post(port, "/v1/chat/completions", body.dump(), headers);
  }

  static void expect_error(const foreshore::testing::HttpResult& r, int status,
                           const std::string& type) {
    EXPECT_EQ(r.status, status) << r.body;
    const json j = r.json();
    ASSERT_TRUE(j.contains("error")) << r.body;
    EXPECT_EQ(j["error"]["type"], type) << r.body;
    EXPECT_TRUE(j["error"]["message"].is_string());
    EXPECT_TRUE(j["error"].contains("param"));
    EXPECT_TRUE(j["error"].contains("code"));
  }

  std::shared_ptr<FakeBackend> edge, cloud;
  std::unique_ptr<Gateway> gateway;
  std::thread thread;
  int port = 0;
};

TEST_F(GatewayTest, NonStreamingNamesWhereItRan) {
  start();
  auto r = chat(chat_body(), {{"x-foreshore-tier", "cloud"}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-foreshore-tier"), "cloud");
  EXPECT_EQ(r.header("x-foreshore-model"), "big-cloud");
  EXPECT_EQ(r.header("x-foreshore-model-version"), "big-cloud@v1");
  const std::string id = r.header("x-foreshore-decision-id");
  EXPECT_FALSE(id.empty());
  const json j = r.json();
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["id"], "chatcmpl-" + id);
  EXPECT_EQ(j["model"], "big-cloud");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(j["choices"][0]["message"]["content"], "Hello world!");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(j["usage"]["prompt_tokens"], 5);
  EXPECT_EQ(j["usage"]["completion_tokens"], 3);
  EXPECT_EQ(j["usage"]["total_tokens"], 8);
  EXPECT_EQ(j["foreshore"]["tier"], "cloud");
  EXPECT_EQ(j["foreshore"]["placement"], "cloud");
  EXPECT_EQ(j["foreshore"]["model"], "big-cloud");
  EXPECT_EQ(j["foreshore"]["model_version"], "big-cloud@v1");
  EXPECT_EQ(j["foreshore"]["decision_id"], id);
  EXPECT_EQ(cloud->calls.load(), 1);
  EXPECT_EQ(edge->calls.load(), 0);

  auto again = chat(chat_body(), {{"x-foreshore-tier", "cloud"}});
  EXPECT_NE(again.header("x-foreshore-decision-id"), id);
}

TEST_F(GatewayTest, PassesParametersToTheTier) {
  start();
  json b = chat_body();
  b["model"] = "tiny-edge";
  b["max_tokens"] = 9;
  b["temperature"] = 0;
  b["stop"] = "x";
  b["seed"] = 3;
  auto r = chat(b);
  ASSERT_EQ(r.status, 200) << r.body;
  std::lock_guard lock(edge->mu);
  EXPECT_EQ(edge->last.params.max_tokens, 9);
  EXPECT_FLOAT_EQ(*edge->last.params.temperature, 0.0f);
  EXPECT_EQ(edge->last.params.stop, std::vector<std::string>{"x"});
  EXPECT_EQ(edge->last.params.seed, 3u);
  EXPECT_EQ(edge->last.request_id, r.header("x-foreshore-decision-id"));
  EXPECT_TRUE(edge->last.deadline.has_value());
  EXPECT_TRUE(edge->last.model.empty());
}

TEST_F(GatewayTest, SelectsTiers) {
  start();
  auto tier_for = [&](json model, httplib::Headers h = {}) {
    json b = chat_body();
    if (model.is_null()) {
      b.erase("model");
    } else {
      b["model"] = model;
    }
    auto r = chat(b, h);
    return r.status == 200 ? r.header("x-foreshore-tier") : std::to_string(r.status);
  };
  EXPECT_EQ(tier_for(nullptr), "edge");  // the first device tier
  EXPECT_EQ(tier_for("cloud"), "cloud");
  EXPECT_EQ(tier_for("gpt-4o"), "cloud");
  EXPECT_EQ(tier_for("big-cloud"), "cloud");
  EXPECT_EQ(tier_for("tiny-edge"), "edge");
  EXPECT_EQ(tier_for("gpt-4o", {{"x-foreshore-tier", "edge"}}), "edge");
  EXPECT_EQ(tier_for("foreshore"), "edge");  // the gateway's choice
  EXPECT_EQ(tier_for("nope"), "404");
  EXPECT_EQ(tier_for("edge", {{"x-foreshore-tier", "moon"}}), "400");
  auto r = chat(json{{"model", "nope"}, {"messages", chat_body()["messages"]}});
  expect_error(r, 404, "invalid_request_error");
  EXPECT_EQ(r.json()["error"]["code"], "model_not_found");
  EXPECT_EQ(r.json()["error"]["param"], "model");
}

TEST_F(GatewayTest, DefaultTierFromConfig) {
  start("server:\n  default_tier: cloud\n");
  json b = chat_body();
  b.erase("model");
  EXPECT_EQ(chat(b).header("x-foreshore-tier"), "cloud");
}

TEST_F(GatewayTest, Streaming) {
  start();
  json b = chat_body();
  b["stream"] = true;
  b["stream_options"] = {{"include_usage", true}};
  b["logprobs"] = true;
  b["top_logprobs"] = 2;
  auto r = chat(b, {{"x-foreshore-tier", "edge"}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("Content-Type"), "text/event-stream");
  EXPECT_EQ(r.header("x-foreshore-tier"), "edge");
  EXPECT_EQ(r.header("x-foreshore-model"), "tiny-edge");
  const std::string id = r.header("x-foreshore-decision-id");
  auto events = sse_data(r.body);
  ASSERT_EQ(events.size(), 7u) << r.body;  // role, 3 words, finish, usage, [DONE]
  json first = json::parse(events[0]);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["id"], "chatcmpl-" + id);
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(first["foreshore"]["tier"], "edge");
  EXPECT_EQ(first["foreshore"]["decision_id"], id);
  std::string text;
  for (int i = 1; i <= 3; ++i) {
    json c = json::parse(events[i]);
    text += c["choices"][0]["delta"]["content"].get<std::string>();
    EXPECT_TRUE(c["choices"][0]["finish_reason"].is_null());
    EXPECT_EQ(c["choices"][0]["logprobs"]["content"][0]["top_logprobs"].size(), 2u);
  }
  EXPECT_EQ(text, "Hello world!");
  json last = json::parse(events[4]);
  EXPECT_EQ(last["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(last["foreshore"]["model_version"], "tiny-edge@v1");
  json usage = json::parse(events[5]);
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 3);
  EXPECT_EQ(events[6], "[DONE]");
  // By the time the client has read the end of the stream, the request has
  // given back its slot and been counted (a race once: both ran after the
  // final chunk, so a quick client could see neither).
  const std::string m = http_get(port, "/metrics").body;
  EXPECT_NE(m.find("foreshore_requests_total{tier=\"edge\",endpoint=\"chat\",status=\"200\"} 1"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find("foreshore_requests_in_flight 0"), std::string::npos) << m;
  EXPECT_NE(m.find("foreshore_cpu_level_info{level=\""), std::string::npos) << m;
}

TEST_F(GatewayTest, LegacyCompletionsAndStreaming) {
  start();
  auto r = http_post(port, "/v1/completions", R"({"prompt":"Once","logprobs":1})");
  ASSERT_EQ(r.status, 200) << r.body;
  json j = r.json();
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["text"], "Hello world!");
  EXPECT_EQ(j["choices"][0]["logprobs"]["tokens"].size(), 3u);
  EXPECT_EQ(j["foreshore"]["tier"], "edge");
  {
    std::lock_guard lock(edge->mu);
    EXPECT_EQ(edge->last.prompt, "Once");
  }
  r = http_post(port, "/v1/completions", R"({"prompt":"Once","stream":true})");
  ASSERT_EQ(r.status, 200) << r.body;
  auto events = sse_data(r.body);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(json::parse(events[1])["choices"][0]["text"], "Hello");
  EXPECT_EQ(events.back(), "[DONE]");
}

TEST_F(GatewayTest, Auth) {
  setenv("FSH_SERVE_TEST_CLIENT_KEYS", "sk-good", 1);
  start("server:\n  api_keys_env: FSH_SERVE_TEST_CLIENT_KEYS\n");
  auto r = chat(chat_body());
  expect_error(r, 401, "invalid_request_error");
  EXPECT_EQ(r.json()["error"]["code"], "invalid_api_key");
  expect_error(chat(chat_body(), {{"Authorization", "Bearer sk-bad"}}), 401,
               "invalid_request_error");
  expect_error(chat(chat_body(), {{"Authorization", "sk-good"}}), 401, "invalid_request_error");
  EXPECT_EQ(chat(chat_body(), {{"Authorization", "Bearer sk-good"}}).status, 200);
  EXPECT_EQ(http_get(port, "/v1/models").status, 401);
  EXPECT_EQ(http_get(port, "/v1/models", {{"Authorization", "Bearer sk-good"}}).status, 200);
  EXPECT_EQ(http_get(port, "/healthz").status, 200);
}

TEST_F(GatewayTest, MalformedAndOversizedBodies) {
  start("server:\n  max_body_bytes: 2048\n");
  auto r = http_post(port, "/v1/chat/completions", "{\"messages\": [");
  expect_error(r, 400, "invalid_request_error");
  r = chat(json{{"messages", chat_body()["messages"]}, {"n", 0}});
  expect_error(r, 400, "invalid_request_error");
  EXPECT_EQ(r.json()["error"]["param"], "n");
  json big = chat_body();
  big["messages"][0]["content"] = std::string(5000, 'a');
  r = chat(big);
  expect_error(r, 413, "invalid_request_error");
  EXPECT_EQ(r.json()["error"]["code"], "request_too_large");
  // The server is still fine afterwards.
  EXPECT_EQ(chat(chat_body()).status, 200);
  r = http_get(port, "/v1/nothing");
  expect_error(r, 404, "invalid_request_error");
}

TEST_F(GatewayTest, OverloadAnswers429) {
  start("server:\n  max_concurrent_requests: 1\n");
  edge->delay = 300ms;
  std::thread slow([&] {
    json b = chat_body();
    b["model"] = "edge";
    b["stream"] = true;
    EXPECT_EQ(chat(b).status, 200);
  });
  for (int i = 0; i < 500 && edge->calls.load() == 0; ++i) std::this_thread::sleep_for(2ms);
  ASSERT_EQ(edge->calls.load(), 1);
  auto r = chat(chat_body(), {{"x-foreshore-tier", "cloud"}});
  expect_error(r, 429, "rate_limit_error");
  EXPECT_EQ(r.header("Retry-After"), "1");
  slow.join();
  EXPECT_EQ(chat(chat_body(), {{"x-foreshore-tier", "cloud"}}).status, 200);
}

// httplib holds one worker thread per open connection. After a burst, the
// workers beyond the pool's floor (8) exit once idle for worker_idle_timeout_ms.
TEST_F(GatewayTest, IdleWorkerThreadsExitAfterABurst) {
  start("server:\n  worker_idle_timeout_ms: 100\n");
  auto workers = [&] {
    const std::string m = http_get(port, "/metrics").body;
    const std::string key = "\nforeshore_http_worker_threads ";
    const size_t at = m.find(key);
    return at == std::string::npos ? -1.0 : std::stod(m.substr(at + key.size()));
  };
  auto wait_for_workers = [&](auto done) {
    double seen = workers();
    for (int i = 0; i < 500 && !done(seen); ++i) {
      std::this_thread::sleep_for(20ms);
      seen = workers();
    }
    return seen;
  };
  constexpr int kConnections = 24;
  std::vector<int> sockets;
  for (int i = 0; i < kConnections; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    sockets.push_back(fd);
    std::this_thread::sleep_for(2ms);  // httplib's listen backlog is only 5
  }
  EXPECT_GE(wait_for_workers([](double n) { return n >= kConnections; }), kConnections);
  for (const int fd : sockets) ::close(fd);
  EXPECT_LE(wait_for_workers([](double n) { return n >= 0 && n <= 8; }), 8);
  EXPECT_EQ(chat(chat_body(), {{"x-foreshore-tier", "cloud"}}).status, 200);
}

TEST_F(GatewayTest, TierErrorsBeforeOutputKeepTheirStatus) {
  start();
  Error e = make_error(ErrorKind::kResourceExhausted, "upstream answered HTTP 429: slow down");
  e.upstream_status = 429;
  e.retry_after_seconds = 3;
  cloud->fail_before = e;
  for (bool stream : {false, true}) {
    json b = chat_body();
    b["stream"] = stream;
    auto r = chat(b, {{"x-foreshore-tier", "cloud"}});
    expect_error(r, 429, "rate_limit_error");
    EXPECT_EQ(r.header("Retry-After"), "3");
    EXPECT_EQ(r.header("x-foreshore-tier"), "cloud");
  }
  cloud->fail_before = make_error(ErrorKind::kUnavailable, "connection refused");
  expect_error(chat(chat_body(), {{"x-foreshore-tier", "cloud"}}), 503, "service_unavailable");
}

TEST_F(GatewayTest, MidStreamErrorIsAnSseErrorEvent) {
  start();
  cloud->fail_after_first = make_error(ErrorKind::kUnavailable, "the connection died mid-stream");
  json b = chat_body();
  b["stream"] = true;
  auto r = chat(b, {{"x-foreshore-tier", "cloud"}});
  ASSERT_EQ(r.status, 200);
  auto events = sse_data(r.body);
  ASSERT_EQ(events.size(), 3u) << r.body;  // role, "Hello", error
  json err = json::parse(events.back());
  ASSERT_TRUE(err.contains("error")) << r.body;
  EXPECT_NE(err["error"]["message"].get<std::string>().find("died mid-stream"), std::string::npos);
  EXPECT_EQ(r.body.find("[DONE]"), std::string::npos);
}

TEST_F(GatewayTest, DeadlineAnswers504) {
  start("server:\n  request_timeout_ms: 200\n");
  edge->delay = 1000ms;
  const auto t0 = std::chrono::steady_clock::now();
  expect_error(chat(chat_body()), 504, "timeout_error");
  json b = chat_body();
  b["stream"] = true;
  expect_error(chat(b), 504, "timeout_error");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
}

TEST_F(GatewayTest, ClientDisconnectCancelsTheGeneration) {
  start();
  edge->words = std::vector<std::string>(200, " word");
  edge->delay = 20ms;
  json b = chat_body();
  b["stream"] = true;
  {
    httplib::Client client("127.0.0.1", port);
    int chunks = 0;
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/chat/completions";
    req.body = b.dump();
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 3; };
    client.send(req);
    EXPECT_GE(chunks, 3);
  }
  for (int i = 0; i < 200 && !edge->saw_cancel.load(); ++i) std::this_thread::sleep_for(10ms);
  EXPECT_TRUE(edge->saw_cancel.load()) << "the tier kept generating for a client that left";
  edge->words = {"ok"};
  edge->delay = 0ms;
  auto r = chat(chat_body());
  EXPECT_EQ(r.status, 200);
  const std::string metrics = http_get(port, "/metrics").body;
  EXPECT_NE(metrics.find("status=\"499\"} 1"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("foreshore_requests_in_flight 0"), std::string::npos) << metrics;
}

TEST_F(GatewayTest, ModelsHealthReadyMetrics) {
  start();
  auto r = http_get(port, "/v1/models");
  ASSERT_EQ(r.status, 200);
  json j = r.json();
  EXPECT_EQ(j["object"], "list");
  std::set<std::string> ids;
  for (const auto& m : j["data"]) {
    EXPECT_EQ(m["object"], "model");
    EXPECT_TRUE(m["created"].is_number());
    EXPECT_TRUE(m["owned_by"].is_string());
    ids.insert(m["id"].get<std::string>());
  }
  // Tiers, model ids and aliases, then the policy names clients may send.
  EXPECT_EQ(ids, (std::set<std::string>{"foreshore", "edge", "cloud", "gpt-4o", "tiny-edge",
                                        "big-cloud", "foreshore/threshold", "foreshore/cascade",
                                        "foreshore/consistency", "foreshore/optimize",
                                        "foreshore/edge", "foreshore/cloud"}));
  EXPECT_EQ(j["data"][0]["id"], "foreshore");
  EXPECT_EQ(http_get(port, "/healthz").status, 200);
  r = http_get(port, "/readyz");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.json()["tiers"], json::array({"edge", "cloud"}));
  EXPECT_EQ(r.json()["status"], "ready");
  EXPECT_EQ(r.json()["tier_states"]["cloud"]["state"], "ok");

  chat(chat_body());
  chat(json{{"model", "nope"}, {"messages", chat_body()["messages"]}});
  const std::string m = http_get(port, "/metrics").body;
  EXPECT_NE(m.find("foreshore_requests_total{tier=\"edge\",endpoint=\"chat\",status=\"200\"} 1"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find("foreshore_requests_total{tier=\"none\",endpoint=\"chat\",status=\"404\"} 1"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find("foreshore_tokens_total{tier=\"edge\",type=\"completion\"} 3"),
            std::string::npos)
      << m;
  EXPECT_NE(m.find("foreshore_request_duration_seconds_count{tier=\"edge\"} 1"), std::string::npos)
      << m;
}

TEST_F(GatewayTest, ReloadSwapsTheConfigAndKeepsTheOldOneOnError) {
  start();
  auto r = chat(
      {{"model", "gpt-4o"}, {"messages", json::array({{{"role", "user"}, {"content", "hi"}}})}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-foreshore-tier"), "cloud");

  // The alias moves to the edge; both tiers are unchanged, so neither is rebuilt.
  const std::string tiers =
      "tiers:\n"
      "  edge:\n    model: tiny-edge\n"
      "  cloud:\n    kind: openai\n    model: big-cloud\n"
      "    endpoint: http://127.0.0.1:9/v1\n";
  auto next = config::parse_config(tiers + "models:\n  gpt-4o: edge\n", "next.yaml");
  ASSERT_TRUE(next.ok()) << next.error().message;
  next->server.log_requests = false;
  int built = 0;
  auto counting = [&](const backend::TierConfig& t) {
    ++built;
    return Result<std::shared_ptr<backend::Backend>>(
        t.name == "edge" ? std::static_pointer_cast<backend::Backend>(edge)
                         : std::static_pointer_cast<backend::Backend>(cloud));
  };
  ASSERT_TRUE(gateway->reload(std::move(next).value(), counting).ok());
  EXPECT_EQ(built, 0);
  r = chat(
      {{"model", "gpt-4o"}, {"messages", json::array({{{"role", "user"}, {"content", "hi"}}})}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-foreshore-tier"), "edge");

  // A new tier whose backend cannot be built: the reload fails, nothing changes.
  auto broken = config::parse_config(
      tiers + "  spare:\n    model: missing\nmodels:\n  gpt-4o: cloud\n", "broken.yaml");
  ASSERT_TRUE(broken.ok()) << broken.error().message;
  auto failed = gateway->reload(std::move(broken).value(), [](const backend::TierConfig&) {
    return Result<std::shared_ptr<backend::Backend>>(
        make_error(ErrorKind::kNotFound, "model 'missing' not found"));
  });
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.error().message.find("tiers.spare"), std::string::npos)
      << failed.error().message;
  r = chat(
      {{"model", "gpt-4o"}, {"messages", json::array({{{"role", "user"}, {"content", "hi"}}})}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-foreshore-tier"), "edge");
  const std::string m = http_get(port, "/metrics").body;
  EXPECT_NE(m.find("foreshore_config_reloads_total{outcome=\"ok\"} 1"), std::string::npos) << m;
  EXPECT_NE(m.find("foreshore_config_reloads_total{outcome=\"failed\"} 1"), std::string::npos) << m;
}

TEST_F(GatewayTest, AliasFallbackChainRespectsTheDataClass) {
  start();
  const std::string tiers =
      "tiers:\n"
      "  edge:\n    model: tiny-edge\n"
      "  cloud:\n    kind: openai\n    model: big-cloud\n"
      "    endpoint: http://127.0.0.1:9/v1\n";
  auto next = config::parse_config(tiers +
                                       "models:\n"
                                       "  gpt-4o: {tier: cloud, fallback: [edge]}\n"
                                       "  local: {tier: edge, fallback: [cloud]}\n",
                                   "chain.yaml");
  ASSERT_TRUE(next.ok()) << next.error().message;
  next->server.log_requests = false;
  ASSERT_TRUE(gateway
                  ->reload(std::move(next).value(),
                           [&](const backend::TierConfig& t) {
                             return Result<std::shared_ptr<backend::Backend>>(
                                 t.name == "edge"
                                     ? std::static_pointer_cast<backend::Backend>(edge)
                                     : std::static_pointer_cast<backend::Backend>(cloud));
                           })
                  .ok());
  const json messages = json::array({{{"role", "user"}, {"content", "hi"}}});

  // The cloud fails before answering: the alias's chain serves from the edge.
  cloud->fail_before = make_error(ErrorKind::kUnavailable, "upstream 503");
  auto r = chat({{"model", "gpt-4o"}, {"messages", messages}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-foreshore-tier"), "edge");

  // The edge fails and the data is device-only: the chain's cloud step is
  // dropped by the rules, so the cloud is never called.
  cloud->fail_before.reset();
  edge->fail_before = make_error(ErrorKind::kUnavailable, "edge is down");
  const int cloud_calls = cloud->calls.load();
  r = chat({{"model", "local"}, {"messages", messages}},
           {{"x-foreshore-data-class", "device-only"}});
  EXPECT_EQ(r.status, 503) << r.body;
  EXPECT_EQ(cloud->calls.load(), cloud_calls);
  // The same request with public data takes the chain to the cloud.
  r = chat({{"model", "local"}, {"messages", messages}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-foreshore-tier"), "cloud");
  edge->fail_before.reset();
}

TEST_F(GatewayTest, DrainFinishesRunningRequestsAndRefusesNewOnes) {
  start();
  edge->delay = 60ms;
  json body = chat_body();
  body["stream"] = true;
  foreshore::testing::HttpResult streamed;
  std::thread client([&] { streamed = chat(body, {{"x-foreshore-tier", "edge"}}); });
  while (gateway->active_requests() == 0) std::this_thread::sleep_for(1ms);
  gateway->begin_drain();

  auto refused = chat(chat_body());
  expect_error(refused, 503, "service_unavailable");
  EXPECT_EQ(refused.json()["error"]["code"], "shutting_down");
  EXPECT_EQ(http_get(port, "/readyz").status, 503);

  client.join();
  EXPECT_EQ(streamed.status, 200) << streamed.body;
  EXPECT_NE(streamed.body.find("Hello"), std::string::npos) << streamed.body;
  EXPECT_NE(streamed.body.find("data: [DONE]"), std::string::npos) << streamed.body;
  // The server counts the stream as ended once its last byte is written,
  // a moment after the client has read it; the bound only guards a hang.
  for (int i = 0; i < 500 && gateway->active_requests() > 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(gateway->active_requests(), 0);
}

TEST(GatewayLifecycleTest, BrokenEdgeModelLeavesTheOtherTiersServing) {
  auto c = config::parse_config(
      "tiers:\n"
      "  edge:\n    model: broken.gguf\n"
      "  cloud:\n    kind: openai\n    model: big-cloud\n    endpoint: http://127.0.0.1:9/v1\n",
      "t.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  c->server.port = 0;
  c->server.log_requests = false;
  Gateway g(std::move(c).value());
  auto port = g.bind();
  ASSERT_TRUE(port.ok());
  std::thread t([&] { g.run(); });
  auto cloud = std::make_shared<FakeBackend>("cloud", backend::Placement::kCloud, "big-cloud");
  auto loaded = g.load_tiers([&](const backend::TierConfig& tier) {
    if (tier.name == "edge") {
      return Result<std::shared_ptr<backend::Backend>>(
          make_error(ErrorKind::kCorrupt, "broken.gguf: truncated at byte 40"));
    }
    return Result<std::shared_ptr<backend::Backend>>(
        std::static_pointer_cast<backend::Backend>(cloud));
  });
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  const auto ready = http_get(*port, "/readyz");
  EXPECT_EQ(ready.status, 200);
  EXPECT_NE(ready.body.find("truncated at byte 40"), std::string::npos) << ready.body;

  // Data that may leave the device is served by the cloud...
  auto r = http_post(*port, "/v1/chat/completions", chat_body().dump());
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-foreshore-tier"), "cloud");
  // ...device-only data gets a 503 that says why, and the cloud never sees it.
  const int cloud_calls = cloud->calls.load();
  r = http_post(*port, "/v1/chat/completions", chat_body().dump(),
                {{"x-foreshore-data-class", "device-only"}});
  EXPECT_EQ(r.status, 503) << r.body;
  EXPECT_NE(r.body.find("truncated at byte 40"), std::string::npos) << r.body;
  EXPECT_EQ(cloud->calls.load(), cloud_calls);
  g.stop();
  t.join();
}

TEST(GatewayLifecycleTest, NotReadyUntilTiersLoad) {
  auto c = config::parse_config("tiers:\n  edge:\n    model: m\n", "t.yaml");
  ASSERT_TRUE(c.ok());
  c->server.port = 0;
  c->server.log_requests = false;
  Gateway g(std::move(c).value());
  auto port = g.bind();
  ASSERT_TRUE(port.ok());
  std::thread t([&] { g.run(); });
  EXPECT_EQ(http_get(*port, "/healthz").status, 200);
  EXPECT_EQ(http_get(*port, "/readyz").status, 503);
  auto r = http_post(*port, "/v1/chat/completions", chat_body().dump());
  EXPECT_EQ(r.status, 503);
  auto failed = g.load_tiers([](const backend::TierConfig&) {
    return Result<std::shared_ptr<backend::Backend>>(make_error(ErrorKind::kNotFound, "no model"));
  });
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.error().message, "t.yaml: tiers.edge: no model");
  g.stop();
  t.join();
}

Result<config::GatewayConfig> minimal_config(int port) {
  auto c = config::parse_config("tiers:\n  edge:\n    model: m\n", "t.yaml");
  if (c.ok()) c->server.port = port;
  return c;
}

// A second gateway on a port in use must fail, not share the port's
// connections with the first (as SO_REUSEPORT would let it).
TEST(GatewayLifecycleTest, PortInUseIsAnError) {
  Gateway first(minimal_config(0).value());
  auto port = first.bind();
  ASSERT_TRUE(port.ok()) << port.error().message;
  Gateway second(minimal_config(*port).value());
  auto again = second.bind();
  ASSERT_FALSE(again.ok());
  EXPECT_NE(again.error().message.find("address in use"), std::string::npos)
      << again.error().message;
}

// The kernel completes handshakes up to the listen backlog before the server
// accepts any; httplib's own backlog of 5 would leave the rest of a burst
// waiting for SYN retransmits.
TEST(GatewayLifecycleTest, ListenBacklogHoldsABurstOfConnections) {
  Gateway g(minimal_config(0).value());
  auto port = g.bind();  // bound and listening, but run() does not accept yet
  ASSERT_TRUE(port.ok()) << port.error().message;
  constexpr int kBurst = 64;
  std::vector<pollfd> connecting;
  for (int i = 0; i < kBurst; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<uint16_t>(*port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
    ASSERT_TRUE(rc == 0 || errno == EINPROGRESS) << std::strerror(errno);
    connecting.push_back({fd, POLLOUT, 0});
  }
  int established = 0;
  for (auto& p : connecting) {
    // A dropped handshake is retried only after 1 s, so 3 s tells them apart.
    if (::poll(&p, 1, 3000) == 1) {
      int error = 0;
      socklen_t size = sizeof error;
      ::getsockopt(p.fd, SOL_SOCKET, SO_ERROR, &error, &size);
      established += error == 0;
    }
    ::close(p.fd);
  }
  EXPECT_EQ(established, kBurst);
}

TEST(GatewayLifecycleTest, StopBeforeRunReturns) {
  auto c = config::parse_config("tiers:\n  edge:\n    model: m\n", "t.yaml");
  ASSERT_TRUE(c.ok());
  c->server.port = 0;
  Gateway g(std::move(c).value());
  ASSERT_TRUE(g.bind().ok());
  g.stop();
  g.run();  // returns at once
}

}  // namespace
}  // namespace foreshore::serve

namespace foreshore::serve {
namespace {

// A request the cloud tier serves, for SharedLimits on its own.
struct LimitsFixture {
  std::vector<backend::TierConfig> tiers;
  route::Decision decision;
  ApiRequest api;
  LimitsFixture() {
    backend::TierConfig cloud;
    cloud.name = "cloud";
    cloud.placement = backend::Placement::kCloud;
    cloud.price_output_per_mtok = 1000;  // $0.001 a token
    tiers.push_back(cloud);
    decision.plan.kind = route::PlanKind::kCloud;
    decision.plan.cloud_tier = "cloud";
    decision.plan.cloud_allowed = true;
    api.backend.messages.push_back({"user", "hi"});
    api.backend.params.max_tokens = 10;  // holds $0.01
  }
};

std::unique_ptr<state::SharedState> local_state() {
  return std::move(state::SharedState::create(state::StateSettings{})).value();
}

TEST(SharedLimitsTest, LocalLimitsCountPerKeyAndSettleToTheRealCost) {
  LimitsFixture f;
  LimitsConfig limits;
  limits.per_key.requests_per_minute = 3;
  limits.per_key.budget_usd = 0.025;
  SharedLimits shared(local_state(), true, limits, std::chrono::milliseconds(5000));
  Reservation r1, r2, r3;
  EXPECT_FALSE(shared.admit("a", nullptr, f.decision, f.api, f.tiers, r1));
  EXPECT_FALSE(shared.admit("a", nullptr, f.decision, f.api, f.tiers, r2));
  // $0.02 held: a third $0.01 hold would pass $0.025.
  const auto over = shared.admit("a", nullptr, f.decision, f.api, f.tiers, r3);
  ASSERT_TRUE(over);
  EXPECT_EQ(over->code, "budget_exceeded");
  // Nothing of a refused request stays counted: it cost one request of the minute's 3.
  shared.settle(r1, 0.001, 5);
  shared.settle(r2, 0.001, 5);
  EXPECT_EQ(shared.state().counter("spend:key:a"), 2000);
  Reservation r4, r5;
  EXPECT_FALSE(shared.admit("a", nullptr, f.decision, f.api, f.tiers, r4));
  const auto rate = shared.admit("a", nullptr, f.decision, f.api, f.tiers, r5);
  ASSERT_TRUE(rate);
  EXPECT_EQ(rate->code, "rate_limit_exceeded");
  EXPECT_GT(rate->retry_after_seconds, 0);
  // Another key has limits of its own.
  Reservation other;
  EXPECT_FALSE(shared.admit("b", nullptr, f.decision, f.api, f.tiers, other));
}

TEST(SharedLimitsTest, VirtualKeysOfOneTeamShareTheTeamsBudget) {
  LimitsFixture f;
  LimitsConfig limits;
  limits.per_team["t"].budget_usd = 0.025;  // two $0.01 holds, not three
  SharedLimits shared(local_state(), true, limits, std::chrono::milliseconds(5000));
  VirtualKey a, b;
  a.id = "a";
  b.id = "b";
  a.team = b.team = "t";
  Reservation ra, rb, rc;
  EXPECT_FALSE(shared.admit("x", &a, f.decision, f.api, f.tiers, ra));
  EXPECT_FALSE(shared.admit("y", &b, f.decision, f.api, f.tiers, rb));
  const auto over = shared.admit("y", &b, f.decision, f.api, f.tiers, rc);
  ASSERT_TRUE(over);
  EXPECT_EQ(over->code, "budget_exceeded");
  EXPECT_NE(over->message.find("team:t"), std::string::npos) << over->message;
  shared.settle(ra, 0.002, 2);
  shared.settle(rb, 0.003, 3);
  EXPECT_EQ(shared.state().counter("spend:team:t"), 5000);
}

TEST(SharedLimitsTest, BudgetsFailClosedOrOpenWhileRedisIsDown) {
  LimitsFixture f;
  LimitsConfig limits;
  limits.per_key.budget_usd = 1;
  for (const bool fail_open : {false, true}) {
    state::StateSettings s;
    s.backend = "redis";
    s.url = "redis://127.0.0.1:1";  // nothing listens on port 1
    s.timeout_ms = 50;
    auto state = state::SharedState::create(s);
    ASSERT_TRUE(state.ok()) << state.error().message;
    SharedLimits shared(std::move(state).value(), fail_open, limits,
                        std::chrono::milliseconds(5000));
    EXPECT_FALSE(shared.state().connected());
    Reservation r;
    const auto refused = shared.admit("a", nullptr, f.decision, f.api, f.tiers, r);
    if (fail_open) {
      EXPECT_FALSE(refused) << refused->message;
    } else {
      ASSERT_TRUE(refused);
      EXPECT_EQ(refused->status, 503);
      EXPECT_EQ(refused->code, "budget_state_unavailable");
    }
  }
}

}  // namespace
}  // namespace foreshore::serve
