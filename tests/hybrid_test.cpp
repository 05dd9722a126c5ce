// The hybrid pipeline (src/hybrid): its typed configuration, the shared
// limits, the refusals it answers with, the egress policy it lends the cloud
// tiers, and a request's whole run in process. The gateway over HTTP is
// tested in serve_test.cpp.
#include "hybrid/hybrid.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "support/test_paths.h"

namespace foreshore::hybrid {
namespace {

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
  EXPECT_EQ(c->tiers[0].kind(), backend::TierKind::kEmbedded);
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
  EXPECT_EQ(
      config_error("server:\n  cors_origins: [app.example.com]\ntiers:\n  e:\n    model: m\n"),
      "cfg.yaml: server.cors_origins: 'app.example.com' is not an origin: give scheme and "
      "host (https://app.example.com) or '*' for any");
  EXPECT_EQ(config_error("tiers:\n  e:\n    model: m\n    threads: 100000\n"),
            "cfg.yaml: tiers.e.threads: must be 0 (one per core) to 1024");
  EXPECT_EQ(config_error("tiers:\n  e:\n    model: m\n    kv_cache_type: q4_0\n"),
            "cfg.yaml: tiers.e.kv_cache_type: 'q4_0' is not f16 (the default) or q8_0");
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
            "kv_memory_mb, kv_cache_type, threads, chat_format, timeouts, verify_tls, ca_file, "
            "low_memory_model)");
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
  EXPECT_EQ(c->tiers[0].kind(), backend::TierKind::kEmbedded);

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
  // A cloud model with no endpoint would be dropped without a word.
  f.upstream.clear();
  bad = config::config_from_flags(f);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().message,
            "--upstream-model needs --upstream URL: the OpenAI-compatible endpoint of the cloud "
            "tier (e.g. https://api.openai.com/v1)");
}

TEST(ConfigTest, RoutingAndPrivacySectionsAreCheckedAndKept) {
  auto c = config::load_config(std::string(FSH_SOURCE_DIR) + "/examples/gateway.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_TRUE(c->routing_configured);
  // examples/gateway.yaml's privacy: section, read into the router's configuration.
  EXPECT_EQ(c->routing.privacy.detectors.count("email"), 1u);
  EXPECT_EQ(c->routing.privacy.keywords.size(), 1u);
  const std::string e = config_error("tiers:\n  e:\n    model: m\nrouting:\n  polcy: edge\n");
  EXPECT_NE(e.find("cfg.yaml: routing.polcy"), std::string::npos) << e;
}

// The neighbour estimate's settings reach the learner's configuration, and
// each bad value is named with its key and range.
TEST(ConfigTest, LearningNeighbourSettingsAreReadAndChecked) {
  auto c = config::parse_config(
      "tiers:\n  e:\n    model: m\nrouting:\n  learning: {enabled: true, neighbours: false,"
      " neighbour_k: 32, neighbour_gamma: 2.5, neighbour_prior: 7, form_features: false}\n",
      "cfg.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_FALSE(c->routing.learning.neighbours);
  EXPECT_FALSE(c->routing.learning.form_features);
  EXPECT_EQ(c->routing.learning.neighbour_k, 32u);
  EXPECT_DOUBLE_EQ(c->routing.learning.neighbour_gamma, 2.5);
  EXPECT_DOUBLE_EQ(c->routing.learning.neighbour_prior, 7.0);
  auto d =
      config::parse_config("tiers:\n  e:\n    model: m\nrouting:\n  learning: {}\n", "cfg.yaml");
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_TRUE(d->routing.learning.neighbours);
  EXPECT_TRUE(d->routing.learning.form_features);
  EXPECT_EQ(d->routing.learning.neighbour_k, route::LearnerOptions{}.neighbour_k);

  auto learning_error = [](const std::string& settings) {
    return config_error("tiers:\n  e:\n    model: m\nrouting:\n  learning: {" + settings + "}\n");
  };
  EXPECT_NE(learning_error("neighbours: maybe")
                .find("cfg.yaml: routing.learning.neighbours: must be true or false"),
            std::string::npos);
  EXPECT_NE(learning_error("form_features: 2")
                .find("cfg.yaml: routing.learning.form_features: must be true or false"),
            std::string::npos);
  EXPECT_NE(learning_error("neighbour_k: 0")
                .find("cfg.yaml: routing.learning.neighbour_k: must be between 1"),
            std::string::npos);
  EXPECT_NE(learning_error("neighbour_gamma: -1")
                .find("cfg.yaml: routing.learning.neighbour_gamma: must be between 0"),
            std::string::npos);
  EXPECT_NE(learning_error("neighbour_prior: lots")
                .find("cfg.yaml: routing.learning.neighbour_prior: must be a number"),
            std::string::npos);
  const std::string typo = learning_error("neighbour_kk: 3");
  EXPECT_NE(typo.find("routing.learning.neighbour_kk: unknown key; known: "), std::string::npos)
      << typo;
  EXPECT_NE(typo.find("neighbour_gamma"), std::string::npos) << typo;
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
      " save_every_labels: 10, neighbours: true, neighbour_k: 64, neighbour_gamma: 3,"
      " neighbour_prior: 1, form_features: false}\n";
  EXPECT_EQ(config_error(yaml), "(no error)");
  size_t routing_keys = 0;
  for (const auto& k : config::config_keys()) routing_keys += k.starts_with("routing.");
  EXPECT_EQ(routing_keys, 26u) << "a routing key was added: add it to this file above too";
}

TEST(ConfigTest, LoadConfigMissingFile) {
  auto c = config::load_config("/nonexistent/foreshore.yaml");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.error().kind, ErrorKind::kNotFound);
}

// ---------------------------------------------------------------- refusals

TEST(RefusalTest, TierFailuresBecomeKindsWithoutHttp) {
  const auto refusal = [](ErrorKind kind, int upstream = 0) {
    Error e = make_error(kind, "tier 'cloud': it went wrong");
    e.upstream_status = upstream;
    return refusal_from_error(e);
  };
  EXPECT_EQ(refusal(ErrorKind::kPermissionDenied).kind, RefusalKind::kForbidden);
  EXPECT_EQ(refusal(ErrorKind::kCancelled).kind, RefusalKind::kCancelled);
  EXPECT_EQ(refusal(ErrorKind::kUnavailable, 429).kind, RefusalKind::kRateLimited);
  EXPECT_EQ(refusal(ErrorKind::kUnavailable, 422).kind, RefusalKind::kInvalidRequest);
  EXPECT_EQ(refusal(ErrorKind::kUnavailable, 422).upstream_status, 422);
  EXPECT_EQ(refusal(ErrorKind::kDeadlineExceeded).kind, RefusalKind::kTimeout);
  EXPECT_EQ(refusal(ErrorKind::kUnavailable, 500).kind, RefusalKind::kUpstream);
  EXPECT_EQ(refusal(ErrorKind::kUnavailable, 500).code, "upstream_status_500");
  EXPECT_EQ(refusal(ErrorKind::kInternal).kind, RefusalKind::kInternal);
  EXPECT_EQ(refusal(ErrorKind::kUnavailable).kind, RefusalKind::kUnavailable);
  const Refusal overflow = refusal_from_error(
      make_error(ErrorKind::kResourceExhausted, "the prompt exceeds the context"));
  EXPECT_EQ(overflow.kind, RefusalKind::kInvalidRequest);
  EXPECT_EQ(overflow.code, "context_length_exceeded");
  EXPECT_EQ(overflow.message, "the prompt exceeds the context");
  // A client error the upstream explained keeps its code and field.
  Error invalid = make_error(ErrorKind::kInvalidArgument, "tier 'cloud': upstream answered 400");
  invalid.upstream_status = 400;
  invalid.upstream_code = "unsupported_on_edge";
  invalid.upstream_param = "n";
  const Refusal passed = refusal_from_error(invalid);
  EXPECT_EQ(passed.kind, RefusalKind::kInvalidRequest);
  EXPECT_EQ(passed.code, "unsupported_on_edge");
  EXPECT_EQ(passed.param, "n");
}

// ---------------------------------------------------------------- pipeline

// A tier that only says what it is: the pipeline's policies read no answers.
class StubBackend : public backend::Backend {
 public:
  StubBackend(std::string name, backend::Placement placement) {
    info_.name = std::move(name);
    info_.kind = placement == backend::Placement::kCloud ? backend::TierKind::kOpenAi
                                                         : backend::TierKind::kEmbedded;
    info_.placement = placement;
    info_.model = info_.name + "-model";
  }
  const backend::BackendInfo& info() const override { return info_; }
  Result<backend::Completion> generate(const backend::BackendRequest&,
                                       const backend::DeltaSink& on_delta) override {
    calls.fetch_add(1);
    backend::Delta d;
    d.text = "ok";
    if (on_delta && !on_delta(d)) return make_error(ErrorKind::kCancelled, "the caller cancelled");
    backend::Completion c;
    c.text = "ok";
    c.model = info_.model;
    c.finish_reason = "stop";
    return c;
  }

  std::atomic<int> calls{0};

 private:
  backend::BackendInfo info_;
};

// The egress guard's policy counts the class the router found in what it
// let the guard skip, and trusts that scan only if the same detectors made
// it: after a reload it reads the vouched-for texts again itself.
TEST(PipelineTest, CountsTheRoutersClassAndDistrustsAnotherScan) {
  auto c = config::parse_config(
      "tiers:\n  edge:\n    model: tiny-edge\n"
      "  cloud:\n    kind: openai\n    model: big-cloud\n    endpoint: http://127.0.0.1:9/v1\n",
      "test.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  PipelineSettings settings;
  settings.routing = c->routing;
  std::map<std::string, std::shared_ptr<backend::Backend>> backends = {
      {"edge", std::make_shared<StubBackend>("edge", backend::Placement::kDevice)},
      {"cloud", std::make_shared<StubBackend>("cloud", backend::Placement::kCloud)}};
  observe::MetricsRegistry metrics;
  auto pipeline = Pipeline::create(settings, c->tiers, backends, metrics);
  ASSERT_TRUE(pipeline.ok()) << pipeline.error().message;
  const Pipeline& h = **pipeline;
  const std::string_view rest[] = {std::string_view("role: user")};

  EXPECT_EQ(h.egress_verdict("cloud", rest, nullptr), "");
  backend::EgressClearance cleared;
  cleared.scanner = &h.router().sensitivity();
  cleared.rank = static_cast<int32_t>(route::DataClass::kPublic);
  EXPECT_EQ(h.egress_verdict("cloud", rest, &cleared), "");
  cleared.rank = static_cast<int32_t>(route::DataClass::kDeviceOnly);
  EXPECT_NE(h.egress_verdict("cloud", rest, &cleared).find("device-only"), std::string::npos);
  // Detectors other than the ones in force vouched: their class does not
  // count, the texts are read again.
  cleared.scanner = &cleared;
  cleared.texts = {"a story about a cat"};
  EXPECT_EQ(h.egress_verdict("cloud", rest, &cleared), "");
  cleared.texts = {"a story about a cat", "my SSN is 078-05-1120"};
  cleared.rank = static_cast<int32_t>(route::DataClass::kPublic);
  const std::string verdict = h.egress_verdict("cloud", rest, &cleared);
  EXPECT_NE(verdict.find("device-only"), std::string::npos) << verdict;
  EXPECT_NE(verdict.find("us_ssn"), std::string::npos) << verdict;
}

// A request's whole run in process (what the C API calls): placed by its
// tier hint or model, decided, admitted, executed and recorded.
TEST(DeploymentTest, RunsARequestWholeInProcess) {
  auto c = config::parse_config(
      "tiers:\n  edge:\n    model: tiny-edge\n"
      "  cloud:\n    kind: openai\n    model: big-cloud\n    endpoint: http://127.0.0.1:9/v1\n"
      "models:\n  gpt-4o: cloud\n",
      "test.yaml");
  ASSERT_TRUE(c.ok()) << c.error().message;
  auto edge = std::make_shared<StubBackend>("edge", backend::Placement::kDevice);
  auto cloud = std::make_shared<StubBackend>("cloud", backend::Placement::kCloud);
  observe::MetricsRegistry metrics;
  auto made = Deployment::create(
      std::move(c).value(),
      [&](const backend::TierConfig& t) -> Result<std::shared_ptr<backend::Backend>> {
        if (t.name == "edge") return std::shared_ptr<backend::Backend>(edge);
        return std::shared_ptr<backend::Backend>(cloud);
      },
      nullptr, true, metrics, std::make_shared<backend::EgressGuard>());
  ASSERT_TRUE(made.ok()) << made.error().message;
  const Deployment& dep = **made;

  Request request;
  request.backend.messages.push_back({"user", "hi"});
  std::string streamed;
  const backend::DeltaSink collect = [&](const backend::Delta& d) {
    streamed += d.text;
    return true;
  };
  Answer a = dep.run(request, RouteHints{}, "", "id-1", collect);
  ASSERT_FALSE(a.refusal) << a.refusal->message;
  EXPECT_TRUE(a.ran);
  ASSERT_TRUE(a.decision && a.result && a.tier);
  EXPECT_EQ(a.decision->id, "id-1");
  EXPECT_EQ(a.tier->config.name, "edge");
  EXPECT_EQ(a.result->completion.text, "ok");
  EXPECT_EQ(streamed, "ok");

  a = dep.run(request, RouteHints{}, "cloud", "id-2", collect);
  ASSERT_FALSE(a.refusal) << a.refusal->message;
  EXPECT_EQ(a.tier->config.name, "cloud");
  Request aliased = request;
  aliased.model = "gpt-4o";  // an alias of the cloud tier
  a = dep.run(aliased, RouteHints{}, "", "id-3", collect);
  ASSERT_FALSE(a.refusal) << a.refusal->message;
  EXPECT_EQ(a.tier->config.name, "cloud");

  a = dep.run(request, RouteHints{}, "mars", "id-4", collect);
  ASSERT_TRUE(a.refusal);
  EXPECT_EQ(a.refusal->kind, RefusalKind::kInvalidRequest);
  EXPECT_EQ(a.refusal->code, "unknown_tier");
  EXPECT_FALSE(a.ran);
  Request unknown = request;
  unknown.model = "no-such-model";
  a = dep.run(unknown, RouteHints{}, "", "id-5", collect);
  ASSERT_TRUE(a.refusal);
  EXPECT_EQ(a.refusal->kind, RefusalKind::kNotFound);
  EXPECT_EQ(a.refusal->param, "model");

  // Device-only data stays on the device even when the caller names the cloud.
  const int cloud_calls = cloud->calls.load();
  RouteHints private_data;
  private_data.data_class = "device-only";
  a = dep.run(request, private_data, "cloud", "id-6", collect);
  ASSERT_TRUE(a.refusal);
  EXPECT_EQ(a.refusal->kind, RefusalKind::kForbidden) << a.refusal->message;
  EXPECT_EQ(a.refusal->code, "data_class_forbids_tier");
  EXPECT_EQ(cloud->calls.load(), cloud_calls);

  // Without a sink, the answer comes whole.
  a = dep.run(request, RouteHints{}, "cloud", "id-8", {});
  ASSERT_FALSE(a.refusal) << a.refusal->message;
  EXPECT_EQ(a.tier->config.name, "cloud");
  EXPECT_EQ(a.result->completion.text, "ok");

  // A caller that stops reading cancels the answer.
  a = dep.run(request, RouteHints{}, "edge", "id-7", [](const backend::Delta&) { return false; });
  ASSERT_TRUE(a.refusal);
  EXPECT_EQ(a.refusal->kind, RefusalKind::kCancelled);
  EXPECT_TRUE(a.ran);
}

// ---------------------------------------------------------------- shared limits

// A request the cloud tier serves, for SharedLimits on its own.
struct LimitsFixture {
  std::vector<backend::TierConfig> tiers;
  route::Decision decision;
  Request api;
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
  EXPECT_EQ(over->kind, RefusalKind::kOverBudget);
  EXPECT_EQ(over->code, "budget_exceeded");
  // Nothing of a refused request stays counted: it cost one request of the minute's 3.
  shared.settle(r1, 0.001, 5);
  shared.settle(r2, 0.001, 5);
  EXPECT_EQ(shared.state().counter("spend:key:a"), 2000);
  Reservation r4, r5;
  EXPECT_FALSE(shared.admit("a", nullptr, f.decision, f.api, f.tiers, r4));
  const auto rate = shared.admit("a", nullptr, f.decision, f.api, f.tiers, r5);
  ASSERT_TRUE(rate);
  EXPECT_EQ(rate->kind, RefusalKind::kRateLimited);
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
      EXPECT_EQ(refused->kind, RefusalKind::kUnavailable);
      EXPECT_EQ(refused->code, "budget_state_unavailable");
    }
  }
}

}  // namespace
}  // namespace foreshore::hybrid
