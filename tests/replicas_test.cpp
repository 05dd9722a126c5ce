// Several gateways as one: three `foreshore serve` replicas share one real
// Redis (state.backend: redis) behind a real HAProxy, all on loopback ports
// chosen at run time. Budgets, rate limits, open breakers and session pins
// hold across the replicas, and a Redis that dies and comes back loses no
// request and no spend.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <thread>

#include "hybrid/shared_limits.h"
#include "support/fault_server.h"
#include "support/process.h"
#include "support/shared_servers.h"

namespace fs = std::filesystem;
using foreshore::testing::FaultMode;
using foreshore::testing::FaultServer;
using foreshore::testing::http_get;
using foreshore::testing::http_post;
using foreshore::testing::HttpResult;
using foreshore::testing::LoadBalancer;
using foreshore::testing::RedisServer;
using foreshore::testing::ServeProcess;
using nlohmann::json;

namespace {

// The cloud charges $1,000 per million output tokens: $0.001 a token. Its
// answers are "hi", one token, so $0.001 a request.
constexpr double kCostPerRequest = 0.001;
constexpr const char* kAdminEnv = "FSH_TEST_ADMIN_KEY=admin-0123456789abcdef";
constexpr const char* kAdminKey = "admin-0123456789abcdef";

std::string body(const std::string& model = "foreshore", int max_tokens = 4) {
  return json{{"model", model},
              {"max_tokens", max_tokens},
              {"messages", {{{"role", "user"}, {"content", "hi"}}}}}
      .dump();
}

httplib::Headers key(const std::string& k, const std::string& session = {}) {
  httplib::Headers h = {{"Authorization", "Bearer " + k}};
  if (!session.empty()) h.emplace("x-foreshore-session", session);
  return h;
}

class Replicas : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!redis_.available()) GTEST_SKIP() << redis_.why();
    ASSERT_TRUE(redis_.ok()) << redis_.why();
    dir_ = fs::temp_directory_path() /
           ("fsh-replicas-" + std::to_string(::getpid()) + "-" + std::to_string(counter_++));
    fs::create_directories(dir_);
    cloud_.set_reply("hi");
    edge_.set_reply("hi");
  }
  void TearDown() override {
    replicas_.clear();
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  // Starts `n` replicas with the same config; `extra` is appended at top level.
  // REPLICA in the config becomes each replica's number (its own spool file).
  void start(int n, const std::string& policy, const std::string& extra) {
    const std::string yaml =
        "server: " + server_ +
        "\n"
        "tiers:\n"
        "  edge: {kind: openai, placement: device, model: fault-model, endpoint: " +
        edge_.base_url() +
        "}\n"
        "  cloud:\n"
        "    kind: openai\n"
        "    placement: cloud\n"
        "    model: fault-model\n"
        "    endpoint: " +
        cloud_.base_url() +
        "\n"
        "    price: {input_per_mtok: 0, output_per_mtok: 1000}\n"
        "    timeouts: {connect_ms: 1000, first_byte_ms: 2000, total_ms: 5000}\n"
        "routing: {policy: " +
        policy +
        ", edge_tier: edge, cloud_tier: cloud}\n"
        "state: {backend: redis, url: " +
        redis_.url() + ", retry_ms: 100}\n" + extra;
    for (int i = 0; i < n; ++i) {
      std::string own = yaml;
      for (size_t at = own.find("REPLICA"); at != std::string::npos; at = own.find("REPLICA")) {
        own.replace(at, 7, std::to_string(i));
      }
      const std::string path =
          (dir_ / (i == 0 ? "gateway.yaml" : "gateway-" + std::to_string(i) + ".yaml")).string();
      std::ofstream(path) << own;
      replicas_.push_back(std::make_unique<ServeProcess>(std::vector<std::string>{"--config", path},
                                                         std::vector<std::string>{kAdminEnv}));
      ASSERT_TRUE(replicas_.back()->ok()) << replicas_.back()->process().stderr_text();
    }
  }

  std::vector<int> ports() const {
    std::vector<int> p;
    for (const auto& r : replicas_) p.push_back(r->port());
    return p;
  }

  inline static int counter_ = 0;
  std::string server_ = "{log_requests: false}";
  RedisServer redis_;
  FaultServer cloud_;
  FaultServer edge_;
  fs::path dir_;
  std::vector<std::unique_ptr<ServeProcess>> replicas_;
};

// Sends `n` requests from `threads` threads at `port`; the statuses.
std::vector<int> burst(int port, int n, int threads, const std::string& payload,
                       const httplib::Headers& headers) {
  std::vector<int> statuses(static_cast<size_t>(n));
  std::atomic<int> next{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      for (int i = next++; i < n; i = next++) {
        statuses[static_cast<size_t>(i)] =
            http_post(port, "/v1/chat/completions", payload, headers).status;
      }
    });
  }
  for (auto& t : pool) t.join();
  return statuses;
}

int count(const std::vector<int>& statuses, int status) {
  return static_cast<int>(std::count(statuses.begin(), statuses.end(), status));
}

TEST_F(Replicas, BudgetHoldsAcrossReplicasUnderConcurrentLoad) {
  // $0.02: twenty answers at $0.001. Each request holds back max_tokens 4 at
  // $0.001 ($0.004) until its real cost is known.
  start(3, "cloud", "limits: {budget_usd: 0.02}\n");
  LoadBalancer lb(ports(), dir_.string());
  if (!lb.available()) GTEST_SKIP() << lb.why();
  ASSERT_TRUE(lb.ok()) << lb.why();
  const auto statuses = burst(lb.port(), 40, 8, body(), key("team-a"));
  const int served = count(statuses, 200);
  EXPECT_EQ(served + count(statuses, 429), 40);
  EXPECT_LE(served * kCostPerRequest, 0.02 + kCostPerRequest + 1e-9) << served << " served";
  EXPECT_GE(served, 5) << "the budget should have admitted at least a quarter of its worth";
  // What Redis holds is what was spent: no hold is left behind.
  const std::string spent = redis_.command(
      {"GET", "fsh:spend:key:" + foreshore::hybrid::client_identity("Bearer team-a")});
  EXPECT_EQ(std::stoll(spent), static_cast<long long>(served) * 1000) << spent;
  EXPECT_EQ(static_cast<int>(cloud_.received().size()), served);
}

TEST_F(Replicas, RateLimitOfNPerMinuteAdmitsNInTotal) {
  start(3, "cloud", "limits: {requests_per_minute: 12}\n");
  LoadBalancer lb(ports(), dir_.string());
  if (!lb.available()) GTEST_SKIP() << lb.why();
  ASSERT_TRUE(lb.ok()) << lb.why();
  // A burst that straddles a clock minute meets two windows: try again then.
  for (int attempt = 0; attempt < 3; ++attempt) {
    const auto minute = std::time(nullptr) / 60;
    const auto statuses = burst(lb.port(), 30, 6, body(), key("rate-" + std::to_string(attempt)));
    if (std::time(nullptr) / 60 != minute) continue;
    EXPECT_EQ(count(statuses, 200), 12);
    EXPECT_EQ(count(statuses, 429), 18);
    return;
  }
  FAIL() << "every burst straddled a minute";
}

TEST_F(Replicas, BreakerOpenedThroughOneReplicaStopsCloudCallsFromTheOthers) {
  start(3, "cloud", "");
  cloud_.set_mode(FaultMode::kStatus500);
  // The breaker opens after 5 failed attempts (3 per request).
  for (int i = 0; i < 3; ++i) {
    http_post(replicas_[0]->port(), "/v1/chat/completions", body(), key("b"));
  }
  const json ready = http_get(replicas_[0]->port(), "/readyz").json();
  ASSERT_EQ(ready["tier_states"]["cloud"]["breaker"], "open") << ready.dump();
  cloud_.set_mode(FaultMode::kNormal);
  cloud_.clear_received();
  // Replicas cache what they read for 0.1 s; "within a second" leaves room.
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  for (int i = 1; i <= 2; ++i) {
    const HttpResult r = http_post(replicas_[static_cast<size_t>(i)]->port(),
                                   "/v1/chat/completions", body(), key("b"));
    EXPECT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.header("x-foreshore-tier"), "edge") << r.body;
  }
  EXPECT_TRUE(cloud_.received().empty()) << "a replica called the cloud its peer found failing";
}

TEST_F(Replicas, SessionPinnedThroughOneReplicaIsHonouredThroughAnother) {
  start(2, "edge", "");
  // foreshore/cloud sends this turn to the cloud, which pins the session there.
  const HttpResult first = http_post(replicas_[0]->port(), "/v1/chat/completions",
                                     body("foreshore/cloud"), key("p", "conversation-1"));
  ASSERT_EQ(first.status, 200) << first.body;
  ASSERT_EQ(first.header("x-foreshore-tier"), "cloud");
  // The policy says edge; the pin from the other replica says cloud.
  const HttpResult next =
      http_post(replicas_[1]->port(), "/v1/chat/completions", body(), key("p", "conversation-1"));
  ASSERT_EQ(next.status, 200) << next.body;
  EXPECT_EQ(next.header("x-foreshore-tier"), "cloud");
  const HttpResult other =
      http_post(replicas_[1]->port(), "/v1/chat/completions", body(), key("p", "conversation-2"));
  EXPECT_EQ(other.header("x-foreshore-tier"), "edge");
}

TEST_F(Replicas, RedisDownRepliesGoOnLocallyAndResyncWhenItIsBack) {
  start(2, "cloud", "limits: {budget_usd: 100}\n");
  const std::string spend_key =
      "fsh:spend:key:" + foreshore::hybrid::client_identity("Bearer outage");
  for (int i = 0; i < 4; ++i) {
    ASSERT_EQ(http_post(replicas_[static_cast<size_t>(i % 2)]->port(), "/v1/chat/completions",
                        body(), key("outage"))
                  .status,
              200);
  }
  EXPECT_EQ(redis_.command({"GET", spend_key}), "4000");
  const int redis_port = redis_.port();
  redis_.kill();
  // Zero requests lost: each replica goes on with its own copy.
  for (int i = 0; i < 6; ++i) {
    const HttpResult r = http_post(replicas_[static_cast<size_t>(i % 2)]->port(),
                                   "/v1/chat/completions", body(), key("outage"));
    EXPECT_EQ(r.status, 200) << r.body;
  }
  for (const auto& replica : replicas_) {
    const json ready = http_get(replica->port(), "/readyz").json();
    EXPECT_EQ(ready["status"], "degraded") << ready.dump();
    EXPECT_EQ(ready["state"]["connected"], false) << ready.dump();
    EXPECT_NE(ready["state"].value("error", "").find("Redis at 127.0.0.1"), std::string::npos)
        << ready.dump();
    EXPECT_NE(http_get(replica->port(), "/metrics")
                  .body.find("foreshore_state_backend_up{backend=\"redis\"} 0"),
              std::string::npos);
  }
  // Back, empty (no persistence): the replicas push what they counted.
  RedisServer again(redis_port);
  ASSERT_TRUE(again.ok()) << again.why();
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  bool all_back = false;
  while (!all_back && std::chrono::steady_clock::now() < until) {
    all_back = true;
    for (const auto& replica : replicas_) {
      all_back =
          all_back && http_get(replica->port(), "/readyz").json()["state"]["connected"] == true;
    }
    if (!all_back) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(all_back) << "the replicas did not reconnect to Redis";
  // What was spent while it was down, once (the 4000 before lived in the lost server).
  EXPECT_EQ(again.command({"GET", spend_key}), "6000");
  EXPECT_TRUE(http_get(replicas_[0]->port(), "/readyz").json()["status"] == "ready");
}

TEST_F(Replicas, VirtualKeysAreSharedAndEnforcedByEveryReplica) {
  server_ = "{log_requests: false, admin_key_env: FSH_TEST_ADMIN_KEY, api_keys: [static-key-0123]}";
  start(2, "cloud", "");
  const int a = replicas_[0]->port();
  const int b = replicas_[1]->port();
  // Made with the CLI: $0.01, cloud only. Each request holds $0.004 and costs
  // $0.001, so one after another, 7 fit (the 8th would pass $0.01 if it cost
  // its worst).
  const auto made = foreshore::testing::run_foreshore(
      {"keys", "create", "--config", (dir_ / "gateway.yaml").string(), "--name", "ci",
       "--budget-usd", "0.01", "--tiers", "cloud", "--team", "research"},
      std::chrono::seconds(30), {kAdminEnv});
  ASSERT_EQ(made.status, 0) << made.err;
  const json created = json::parse(made.out);
  const std::string secret = created["key"];
  const std::string id = created["id"];
  EXPECT_TRUE(secret.starts_with("fsk-"));
  // Stored hashed: the secret is nowhere in Redis.
  EXPECT_EQ(redis_.command({"KEYS", "*" + secret.substr(4) + "*"}), "");
  EXPECT_EQ(redis_.command({"GET", "fsh:vkeyid:" + id}).find(secret.substr(4)), std::string::npos);

  int served = 0;
  for (int i = 0; i < 10; ++i) {
    const HttpResult r = http_post(i % 2 ? b : a, "/v1/chat/completions", body(), key(secret));
    if (r.status == 200) {
      ++served;
    } else {
      EXPECT_EQ(r.status, 429) << r.body;
      EXPECT_EQ(r.json()["error"]["code"], "budget_exceeded") << r.body;
    }
  }
  EXPECT_EQ(served, 7);
  EXPECT_EQ(redis_.command({"GET", "fsh:spend:team:research"}), "7000");
  // The static keys keep working; an unknown virtual key does not.
  EXPECT_EQ(http_post(a, "/v1/chat/completions", body(), key("static-key-0123")).status, 200);
  EXPECT_EQ(http_post(a, "/v1/chat/completions", body(), key("fsk-0000")).status, 401);

  // Made through the admin API of one replica, used through the other.
  EXPECT_EQ(http_post(b, "/admin/keys", "{}", key("wrong-admin-key-000")).status, 401);
  const HttpResult edge_only = http_post(
      b, "/admin/keys", R"({"name": "edge-only", "tiers": ["edge"], "expires_in_seconds": 2})",
      key(kAdminKey));
  ASSERT_EQ(edge_only.status, 201) << edge_only.body;
  const std::string edge_secret = edge_only.json()["key"];
  const HttpResult to_cloud = http_post(a, "/v1/chat/completions", body(), key(edge_secret));
  EXPECT_EQ(to_cloud.status, 403) << to_cloud.body;
  EXPECT_EQ(to_cloud.json()["error"]["code"], "tier_not_allowed_for_key");
  httplib::Headers to_edge = key(edge_secret);
  to_edge.emplace("x-foreshore-tier", "edge");
  EXPECT_EQ(http_post(a, "/v1/chat/completions", body(), to_edge).status, 200);
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));
  const HttpResult expired = http_post(a, "/v1/chat/completions", body(), to_edge);
  EXPECT_EQ(expired.status, 401);
  EXPECT_NE(expired.body.find("expired"), std::string::npos) << expired.body;

  // Revoked through B, refused by A at once.
  httplib::Client admin("127.0.0.1", b);
  auto revoked =
      admin.Delete("/admin/keys/" + id, {{"Authorization", std::string("Bearer ") + kAdminKey}});
  ASSERT_TRUE(revoked);
  EXPECT_EQ(revoked->status, 200) << revoked->body;
  EXPECT_EQ(http_post(a, "/v1/chat/completions", body(), key(secret)).status, 401);
}

// With the admin API on and no static keys, a virtual key is the only way
// in: a client with no key, a revoked or made-up one is refused (were it
// served, a key's limits would bind only whoever chose to send it), and a
// key whose limits could not be enforced is never made.
TEST_F(Replicas, WithTheAdminApiOnEveryClientNeedsAValidKey) {
  server_ = "{log_requests: false, admin_key_env: FSH_TEST_ADMIN_KEY}";
  start(1, "cloud", "");
  const int a = replicas_[0]->port();
  const HttpResult made =
      http_post(a, "/admin/keys", R"({"name": "e", "tiers": ["edge"]})", key(kAdminKey));
  ASSERT_EQ(made.status, 201) << made.body;
  const std::string secret = made.json()["key"];
  EXPECT_EQ(http_post(a, "/v1/chat/completions", body(), key(secret)).status, 403);
  httplib::Headers to_edge = key(secret);
  to_edge.emplace("x-foreshore-tier", "edge");
  EXPECT_EQ(http_post(a, "/v1/chat/completions", body(), to_edge).status, 200);
  EXPECT_EQ(http_get(a, "/v1/models", key(secret)).status, 200);

  const HttpResult no_key = http_post(a, "/v1/chat/completions", body(), {});
  EXPECT_EQ(no_key.status, 401) << no_key.body;
  EXPECT_NE(no_key.body.find("virtual keys"), std::string::npos) << no_key.body;
  const HttpResult made_up =
      http_post(a, "/v1/chat/completions", body(), key("fsk-00000000000000000000000000000000"));
  EXPECT_EQ(made_up.status, 401) << made_up.body;
  EXPECT_NE(made_up.body.find("unknown"), std::string::npos) << made_up.body;
  EXPECT_EQ(http_post(a, "/v1/chat/completions", body(), key("sk-anything")).status, 401);
  EXPECT_EQ(http_get(a, "/v1/models", {}).status, 401);
  const std::string id = made.json()["id"];
  httplib::Client admin("127.0.0.1", a);
  ASSERT_TRUE(admin.Delete("/admin/keys/" + id, key(kAdminKey)));
  EXPECT_EQ(http_post(a, "/v1/chat/completions", body(), to_edge).status, 401);

  for (const char* bad : {R"({"tiers": ["edgee"]})", R"({"data_classes": ["secret"]})",
                          R"({"budget_usd": -1})", R"({"expires_in_seconds": 1e300})",
                          R"({"expires_in_seconds": -5})", R"({"name": "a", "name": "b"})"}) {
    const HttpResult refused = http_post(a, "/admin/keys", bad, key(kAdminKey));
    EXPECT_EQ(refused.status, 400) << bad << " " << refused.body;
  }
  for (const std::vector<std::string>& bad :
       std::vector<std::vector<std::string>>{{"--tiers", "edgee"},
                                             {"--data-classes", "secret"},
                                             {"--budget-usd", "-1"},
                                             {"--expires-in-days", "-1"}}) {
    std::vector<std::string> args = {"keys", "create", "--config",
                                     (dir_ / "gateway.yaml").string()};
    args.insert(args.end(), bad.begin(), bad.end());
    const auto r = foreshore::testing::run_foreshore(args, std::chrono::seconds(30), {kAdminEnv});
    EXPECT_NE(r.status, 0) << bad[0] << " " << r.out;
    if (bad[0] == "--budget-usd") {
      EXPECT_NE(r.err.find("0 (none) or more"), std::string::npos) << r.err;
    }
  }
}

// PostgreSQL and Redis may be other hosts: a device-only request's text and
// hash never reach PostgreSQL, even with audit_store_text on, and a session
// id (OpenAI's `user`, often an email address) reaches Redis only hashed.
TEST_F(Replicas, DeviceOnlyTextAndSessionIdsStayOffTheSharedServers) {
  foreshore::testing::PostgresServer pg(dir_.string());
  if (!pg.available()) GTEST_SKIP() << pg.why();
  ASSERT_TRUE(pg.ok()) << pg.why();
  server_ = "{log_requests: false, audit_store_text: true, audit_postgres: '" + pg.url() +
            "', audit_spool: '" + (dir_ / "spool.jsonl").string() + "'}";
  start(1, "threshold", "");
  const int a = replicas_[0]->port();
  const auto ask = [&](const std::string& text) {
    const std::string request = json{{"max_tokens", 4},
                                     {"user", "alice@example.com"},
                                     {"messages", {{{"role", "user"}, {"content", text}}}}}
                                    .dump();
    EXPECT_EQ(http_post(a, "/v1/chat/completions", request, key("k")).status, 200);
  };
  ask("card 4111 1111 1111 1111, was it charged twice?");
  ask("what is the capital of France?");
  std::string rows;
  for (int i = 0; i < 50 && rows.find('\n') == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    rows = pg.query(
        "SELECT data_class || '|' || prompt_sha256 || '|' || coalesce(prompt_text, '<null>') "
        "FROM foreshore_requests ORDER BY id");
  }
  EXPECT_NE(rows.find("device-only||<null>"), std::string::npos) << rows;
  EXPECT_EQ(rows.find("4111"), std::string::npos) << rows;
  EXPECT_NE(rows.find("capital of France"), std::string::npos) << rows;
  EXPECT_EQ(redis_.command({"KEYS", "*alice*"}), "");
  EXPECT_NE(redis_.command({"KEYS", "fsh:pin:*"}), "");  // pinned, under the id's digest

  // A database that answers and refuses (here: no such database) stops the
  // start with the reason, rather than spooling forever.
  std::string wrong_db = pg.url();
  wrong_db.replace(wrong_db.rfind('/'), std::string::npos, "/nosuch");
  const std::string config = (dir_ / "wrong-db.yaml").string();
  std::ofstream(config) << "server: {audit_postgres: '" << wrong_db << "', audit_spool: '"
                        << (dir_ / "spool2.jsonl").string() << "'}\n"
                        << "tiers: {cloud: {kind: openai, model: m, endpoint: " << cloud_.base_url()
                        << "}}\n";
  const auto refused = foreshore::testing::run_foreshore(
      {"serve", "--config", config, "--port", "0"}, std::chrono::seconds(30));
  EXPECT_NE(refused.status, 0);
  EXPECT_NE(refused.err.find("nosuch"), std::string::npos) << refused.err;
  EXPECT_NE(refused.err.find("database name"), std::string::npos) << refused.err;
}

// Redis, then PostgreSQL, die under load and come back: every request is
// answered, and PostgreSQL ends up with one audit row per request, no more.
TEST_F(Replicas, KillingRedisThenPostgresUnderLoadLosesNoRequestAndNoAuditRow) {
  foreshore::testing::PostgresServer pg(dir_.string());
  if (!pg.available()) GTEST_SKIP() << pg.why();
  ASSERT_TRUE(pg.ok()) << pg.why();
  server_ = "{log_requests: false, audit_postgres: '" + pg.url() + "', audit_spool: '" +
            (dir_ / "spool-REPLICA.jsonl").string() + "'}";
  start(3, "cloud", "limits: {budget_usd: 100}\n");
  LoadBalancer lb(ports(), dir_.string());
  if (!lb.available()) GTEST_SKIP() << lb.why();
  ASSERT_TRUE(lb.ok()) << lb.why();

  std::atomic<int> sent{0};
  std::atomic<int> answered{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> load;
  for (int t = 0; t < 4; ++t) {
    load.emplace_back([&] {
      while (!stop) {
        ++sent;
        const int status = http_post(lb.port(), "/v1/chat/completions", body(), key("load")).status;
        if (status == 200) ++answered;
      }
    });
  }
  const auto pause = [] { std::this_thread::sleep_for(std::chrono::milliseconds(400)); };
  pause();
  const int redis_port = redis_.port();
  redis_.kill();
  pause();
  const int pg_port = pg.port();
  pg.kill();
  pause();
  RedisServer redis_again(redis_port);
  ASSERT_TRUE(redis_again.ok()) << redis_again.why();
  pause();
  foreshore::testing::PostgresServer pg_again(dir_.string(), pg_port);
  ASSERT_TRUE(pg_again.ok()) << pg_again.why();
  pause();
  stop = true;
  for (auto& t : load) t.join();
  EXPECT_EQ(answered.load(), sent.load()) << "requests lost";
  EXPECT_GT(sent.load(), 8);  // load ran through every outage

  // The replicas replay their spools once PostgreSQL answers again.
  const std::string want = std::to_string(sent.load());
  std::string rows;
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < until) {
    rows = pg_again.query("SELECT count(*) FROM foreshore_requests");
    if (rows == want) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(rows, want) << "audit rows lost";
  EXPECT_EQ(pg_again.query("SELECT count(DISTINCT request_id) FROM foreshore_requests"), want);
  uint64_t spooled = 0;
  for (const auto& r : replicas_) {
    const std::string metrics = http_get(r->port(), "/metrics").body;
    const size_t at = metrics.find("\nforeshore_audit_spooled_rows ");
    if (at != std::string::npos) spooled += std::stoull(metrics.substr(at + 30));
  }
  EXPECT_GT(spooled, 0u) << "the outage should have sent rows to the spool files";

  // `report` reads the same trail from PostgreSQL.
  const auto report = foreshore::testing::run_foreshore(
      {"report", "--postgres", pg_again.url(), "--json"}, std::chrono::seconds(60));
  ASSERT_EQ(report.status, 0) << report.err;
  EXPECT_EQ(json::parse(report.out)["totals"]["requests"], sent.load()) << report.out;
  // It names where the rows came from, not the temporary copy it read.
  EXPECT_TRUE(json::parse(report.out)["db"].get<std::string>().starts_with("postgresql://"))
      << report.out;
}

// A replica that never sent to the cloud predicts its latency from what
// another replica measured there.
TEST_F(Replicas, LatencyLearnedThroughOneReplicaIsPredictedByAnother) {
  start(2, "cloud", "");
  const auto cloud_ttft = [&](size_t replica) {
    const HttpResult r = http_post(replicas_[replica]->port(), "/v1/route", body(), key("latency"));
    return r.status == 200 ? r.json()["signals"]["cloud_ttft_ms"].get<double>() : -1.0;
  };
  const double prior = cloud_ttft(1);
  EXPECT_LT(prior, 1000);
  cloud_.set_mode(FaultMode::kDelayFirstByte);
  cloud_.set_first_byte_delay(std::chrono::milliseconds(1500));
  for (int i = 0; i < 2; ++i) {
    ASSERT_EQ(
        http_post(replicas_[0]->port(), "/v1/chat/completions", body(), key("latency")).status,
        200);
  }
  EXPECT_GE(cloud_ttft(0), 1500);
  // Replicas publish and read once a second.
  double learned = prior;
  for (int i = 0; i < 100 && learned < 1500; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    learned = cloud_ttft(1);
  }
  EXPECT_GE(learned, 1500) << "replica 1 still predicts " << learned << " ms";
  EXPECT_TRUE(cloud_.received().size() == 2u) << "replica 1 should not have called the cloud";
}

// A Redis that wants a password: the right one (from the environment) gets
// the replica on the shared state; a wrong one stops it at start, saying so.
TEST_F(Replicas, RedisPasswordFromTheEnvironmentOrAClearErrorAtStart) {
  RedisServer locked(0, "s3cret-redis-pw");
  ASSERT_TRUE(locked.ok()) << locked.why();
  const std::string path = (dir_ / "locked.yaml").string();
  std::ofstream(path) << "server: {log_requests: false}\n"
                         "tiers:\n"
                         "  edge: {kind: openai, placement: device, model: fault-model, endpoint: "
                      << edge_.base_url()
                      << "}\n"
                         "routing: {policy: edge}\n"
                         "state: {backend: redis, url: "
                      << locked.url() << ", password_env: FSH_TEST_REDIS_PW}\n";
  const auto refused = foreshore::testing::run_foreshore({"serve", "--config", path, "--port", "0"},
                                                         std::chrono::seconds(30),
                                                         {"FSH_TEST_REDIS_PW=wrong-password"});
  EXPECT_NE(refused.status, 0);
  EXPECT_NE(refused.err.find("refused the password"), std::string::npos) << refused.err;
  EXPECT_EQ(refused.err.find("wrong-password"), std::string::npos) << "the password was logged";
  ServeProcess served({"--config", path}, {"FSH_TEST_REDIS_PW=s3cret-redis-pw"});
  ASSERT_TRUE(served.ok()) << served.process().stderr_text();
  const json ready = http_get(served.port(), "/readyz").json();
  EXPECT_EQ(ready["state"]["connected"], true) << ready.dump();
}

// Shadow verdicts of all replicas add up in one place.
TEST_F(Replicas, ShadowAgreementIsCountedOverAllReplicas) {
  server_ = "{log_requests: false, shadow_fraction: 1.0}";
  start(2, "edge", "");
  for (const auto& r : replicas_) {
    const HttpResult answer = http_post(r->port(), "/v1/chat/completions", body(), key("s"));
    ASSERT_EQ(answer.status, 200) << answer.body;
    ASSERT_EQ(answer.header("x-foreshore-tier"), "edge");
  }
  std::string scored;
  for (int i = 0; i < 200 && scored != "2"; ++i) {
    scored = redis_.command({"GET", "fsh:shadow:scored"});
    if (scored != "2") std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(scored, "2");
  EXPECT_EQ(redis_.command({"GET", "fsh:shadow:agreed"}), "2");  // both answered "hi"
  const std::string metrics = http_get(replicas_[0]->port(), "/metrics").body;
  EXPECT_NE(metrics.find("\nforeshore_shadow_scored_all_replicas 2"), std::string::npos);
  EXPECT_NE(metrics.find("\nforeshore_shadow_agreement_ratio_all_replicas 1"), std::string::npos);
}

// The complexity threshold one replica's shadow controller moved to is the
// one every replica routes with.
TEST_F(Replicas, ShadowAdaptedThresholdIsTakenByEveryReplica) {
  server_ = "{log_requests: false, shadow_fraction: 0.5, shadow_target_agreement: 0.9}";
  start(2, "threshold", "");
  // What a replica's controller publishes when it moves (after 50 scored jobs).
  redis_.command({"SET", "fsh:shadow:threshold", "0.15"});
  for (const auto& r : replicas_) {
    ASSERT_EQ(http_post(r->port(), "/v1/chat/completions", body(), key("t")).status, 200);
    const std::string metrics = http_get(r->port(), "/metrics").body;
    EXPECT_NE(metrics.find("\nforeshore_complexity_threshold 0.15\n"), std::string::npos)
        << metrics.substr(metrics.find("foreshore_complexity_threshold"), 120);
  }
}

}  // namespace
