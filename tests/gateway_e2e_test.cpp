// The gateway as users run it: real `foreshore serve` processes on loopback.
// One serves stories260K and stands in for a cloud API; the gateway in front
// of it has its own embedded stories260K as the edge tier. Upstream faults
// come from the in-process FaultServer; llama.cpp's llama-server serves as a
// real third-party upstream when bench/llama_cpp_build.sh has built it.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "support/fault_server.h"
#include "support/process.h"
#include "support/test_paths.h"

namespace foreshore::testing {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

std::vector<std::string> model_env() {
  return {"FORESHORE_MODEL_PATH=" + shared_models_dir()};
}

// The tiers: section of a gateway with an embedded stories260K edge and a
// cloud tier at `endpoint` serving `model`.
std::string edge_and_cloud_tiers(const std::string& model, const std::string& endpoint) {
  return "tiers:\n"
         "  edge:\n"
         "    kind: embedded\n"
         "    model: stories260K\n"
         "    threads: 1\n"
         "  cloud:\n"
         "    kind: openai\n"
         "    placement: cloud\n"
         "    model: " +
         model + "\n    endpoint: " + endpoint + "\n";
}

std::string write_config(const std::string& text) {
  const std::string path = temp_path(".yaml");
  std::ofstream(path) << text;
  return path;
}

json chat_body(bool stream, int max_tokens = 24) {
  json b = {{"messages", {{{"role", "user"}, {"content", "Once upon a time"}}}},
            {"max_tokens", max_tokens},
            {"temperature", 0}};
  if (stream) {
    b["stream"] = true;
    b["stream_options"] = {{"include_usage", true}};
  }
  return b;
}

HttpResult chat(int port, const json& body, const std::string& tier,
                httplib::Headers headers = {}) {
  if (!tier.empty()) headers.emplace("x-foreshore-tier", tier);
  return http_post(port, "/v1/chat/completions", body.dump(), headers);
}

void expect_error(const HttpResult& r, int status) {
  EXPECT_EQ(r.status, status) << r.body;
  const json j = r.json();
  ASSERT_TRUE(j.is_object() && j.contains("error")) << r.body;
  for (const char* key : {"message", "type", "param", "code"}) {
    EXPECT_TRUE(j["error"].contains(key)) << key << " missing in " << r.body;
  }
  EXPECT_TRUE(j["error"]["message"].is_string());
}

// Reads a streamed answer: its events, the concatenated text, the error event.
struct Stream {
  std::vector<json> chunks;
  bool done = false;
  std::string text;
  json error;
};

Stream read_stream(const HttpResult& r) {
  Stream s;
  for (const auto& data : sse_data(r.body)) {
    if (data == "[DONE]") {
      s.done = true;
      continue;
    }
    json j = json::parse(data, nullptr, false);
    EXPECT_FALSE(j.is_discarded()) << data;
    if (j.contains("error")) {
      s.error = j;
      continue;
    }
    for (const auto& c : j["choices"]) {
      if (c.contains("delta") && c["delta"].contains("content")) {
        s.text += c["delta"]["content"].get<std::string>();
      }
    }
    s.chunks.push_back(std::move(j));
  }
  return s;
}

class GatewayE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cloud_ = new ServeProcess({"-m", "stories260K", "--quiet"}, model_env());
    if (!cloud_->ok()) return;
    config_path_ =
        new std::string(write_config("server:\n"
                                     "  max_body_bytes: 65536\n" +
                                     edge_and_cloud_tiers("stories260K", cloud_->base_url()) +
                                     "    price: {input_per_mtok: 0.15, output_per_mtok: 0.6}\n"
                                     "models:\n"
                                     "  gpt-4o-mini: cloud\n"));
    gateway_ = new ServeProcess({"--config", *config_path_}, model_env());
  }

  static void TearDownTestSuite() {
    delete gateway_;
    delete cloud_;
    if (config_path_) std::remove(config_path_->c_str());
    delete config_path_;
    gateway_ = nullptr;
    cloud_ = nullptr;
    config_path_ = nullptr;
  }

  void SetUp() override {
    ASSERT_TRUE(cloud_->ok()) << "cloud tier did not start:\n" << cloud_->process().stderr_text();
    ASSERT_TRUE(gateway_->ok()) << "gateway did not start:\n" << gateway_->process().stderr_text();
  }

  static int port() { return gateway_->port(); }

  static ServeProcess* cloud_;
  static ServeProcess* gateway_;
  static std::string* config_path_;
};

ServeProcess* GatewayE2E::cloud_ = nullptr;
ServeProcess* GatewayE2E::gateway_ = nullptr;
std::string* GatewayE2E::config_path_ = nullptr;

TEST_F(GatewayE2E, NonStreamingOnEachTier) {
  for (const std::string tier : {"edge", "cloud"}) {
    SCOPED_TRACE(tier);
    const auto r = chat(port(), chat_body(false), tier);
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.header("x-foreshore-tier"), tier);
    EXPECT_EQ(r.header("x-foreshore-model"), "stories260K");
    EXPECT_FALSE(r.header("x-foreshore-model-version").empty());
    EXPECT_NE(r.header("x-foreshore-model-version"), "unknown");
    const std::string id = r.header("x-foreshore-decision-id");
    EXPECT_FALSE(id.empty());
    const json j = r.json();
    EXPECT_EQ(j["object"], "chat.completion");
    EXPECT_FALSE(j["choices"][0]["message"]["content"].get<std::string>().empty()) << r.body;
    EXPECT_TRUE(j["choices"][0]["finish_reason"] == "stop" ||
                j["choices"][0]["finish_reason"] == "length");
    EXPECT_GT(j["usage"]["prompt_tokens"].get<int>(), 0);
    EXPECT_GT(j["usage"]["completion_tokens"].get<int>(), 0);
    EXPECT_EQ(j["foreshore"]["tier"], tier);
    EXPECT_EQ(j["foreshore"]["placement"], tier == "edge" ? "device" : "cloud");
    EXPECT_EQ(j["foreshore"]["decision_id"], id);
    EXPECT_EQ(j["foreshore"]["model_version"], r.header("x-foreshore-model-version"));
  }
}

TEST_F(GatewayE2E, SameWeightsGiveTheSameGreedyAnswerOnBothTiers) {
  const auto edge = chat(port(), chat_body(false), "edge");
  const auto cloud = chat(port(), chat_body(false), "cloud");
  ASSERT_EQ(edge.status, 200);
  ASSERT_EQ(cloud.status, 200);
  EXPECT_EQ(edge.json()["choices"][0]["message"]["content"],
            cloud.json()["choices"][0]["message"]["content"]);
  // The cloud process reports the weights it ran, and the gateway passes that on.
  EXPECT_EQ(edge.json()["foreshore"]["model_version"], cloud.json()["foreshore"]["model_version"]);
}

TEST_F(GatewayE2E, StreamingOnEachTier) {
  for (const std::string tier : {"edge", "cloud"}) {
    SCOPED_TRACE(tier);
    const auto r = chat(port(), chat_body(true), tier);
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.header("Content-Type"), "text/event-stream");
    EXPECT_EQ(r.header("x-foreshore-tier"), tier);
    const Stream s = read_stream(r);
    ASSERT_GE(s.chunks.size(), 3u) << r.body;
    EXPECT_TRUE(s.error.is_null()) << r.body;
    EXPECT_TRUE(s.done) << r.body;
    EXPECT_FALSE(s.text.empty());
    EXPECT_EQ(s.chunks.front()["choices"][0]["delta"]["role"], "assistant");
    EXPECT_EQ(s.chunks.front()["foreshore"]["tier"], tier);
    EXPECT_EQ(s.chunks.front()["foreshore"]["decision_id"], r.header("x-foreshore-decision-id"));
    const json& usage = s.chunks.back();
    EXPECT_TRUE(usage["choices"].empty());
    EXPECT_GT(usage["usage"]["completion_tokens"].get<int>(), 0);
    const json& last = s.chunks[s.chunks.size() - 2];
    EXPECT_FALSE(last["choices"][0]["finish_reason"].is_null());
    EXPECT_EQ(last["foreshore"]["tier"], tier);
  }
  // The streamed text is the non-streamed answer.
  const auto plain = chat(port(), chat_body(false), "edge");
  const auto streamed = chat(port(), chat_body(true), "edge");
  EXPECT_EQ(plain.json()["choices"][0]["message"]["content"].get<std::string>(),
            read_stream(streamed).text);
}

// Continuous batching as users meet it: parallel streaming clients with
// different prompts and lengths, arriving at different times, all complete
// with the answers they get one at a time; the engine's load shows in /metrics.
TEST_F(GatewayE2E, ParallelStreamingClientsGetTheirSequentialAnswers) {
  const std::vector<std::string> prompts = {"Once upon a time", "Lily saw a dog", "The sun was hot",
                                            "Tom and Sam went", "A little bird",  "The big tree",
                                            "Mom said no",      "One day a cat"};
  auto body = [&](size_t i, bool stream) {
    json b = chat_body(stream, 8 + 6 * static_cast<int>(i));
    b["messages"][0]["content"] = prompts[i];
    return b;
  };
  std::vector<std::string> sequential;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto r = chat(port(), body(i, false), "edge");
    ASSERT_EQ(r.status, 200) << r.body;
    sequential.push_back(r.json()["choices"][0]["message"]["content"].get<std::string>());
  }
  std::vector<HttpResult> results(prompts.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < prompts.size(); ++i) {
    clients.emplace_back([&, i] { results[i] = chat(port(), body(i, true), "edge"); });
    std::this_thread::sleep_for(std::chrono::milliseconds(3 * i));
  }
  for (auto& c : clients) c.join();
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE(prompts[i]);
    ASSERT_EQ(results[i].status, 200) << results[i].body;
    const Stream s = read_stream(results[i]);
    EXPECT_TRUE(s.done) << results[i].body;
    EXPECT_TRUE(s.error.is_null()) << results[i].body;
    EXPECT_EQ(s.text, sequential[i]);
  }
  const auto metrics = http_get(port(), "/metrics");
  for (const char* needle :
       {"foreshore_edge_running_sequences{tier=\"edge\"} 0",
        "foreshore_edge_queued_sequences{tier=\"edge\"} 0", "foreshore_edge_kv_slots_free",
        "foreshore_edge_kv_blocks_free{tier=\"edge\"}", "foreshore_edge_kv_waits{tier=\"edge\"} 0",
        "foreshore_edge_prefix_cache_hits", "foreshore_edge_steps{tier=\"edge\"}",
        "foreshore_edge_steps_within_ms{tier=\"edge\",le_ms=\"5\"}",
        "foreshore_edge_tokens_per_second{tier=\"edge\"}"}) {
    EXPECT_NE(metrics.body.find(needle), std::string::npos) << needle << "\n" << metrics.body;
  }
}

TEST_F(GatewayE2E, ModelPicksTheTier) {
  json b = chat_body(false);
  b["model"] = "gpt-4o-mini";
  EXPECT_EQ(chat(port(), b, "").header("x-foreshore-tier"), "cloud");
  b["model"] = "edge";
  EXPECT_EQ(chat(port(), b, "").header("x-foreshore-tier"), "edge");
  b.erase("model");
  // Without a model name the policy decides, and the tier that serves is the
  // one POST /v1/route explains for the same request.
  const auto route = http_post(port(), "/v1/route", b.dump());
  ASSERT_EQ(route.status, 200) << route.body;
  const json plan = route.json()["plan"];
  ASSERT_TRUE(plan["kind"] == "edge" || plan["kind"] == "cloud") << plan.dump();
  EXPECT_EQ(chat(port(), b, "").header("x-foreshore-tier"),
            plan[plan["kind"] == "edge" ? "edge_tier" : "cloud_tier"].get<std::string>());
  // The explanation places the model as the request would be placed: a tier
  // by its model id, and an unknown model or tier refused the same way.
  b["model"] = "gpt-4o-mini";
  const auto named = http_post(port(), "/v1/route", b.dump());
  ASSERT_EQ(named.status, 200) << named.body;
  EXPECT_EQ(named.json()["plan"]["kind"], "cloud") << named.body;
  b["model"] = "no-such-model";
  EXPECT_EQ(http_post(port(), "/v1/route", b.dump()).status, 404);
  EXPECT_EQ(chat(port(), b, "").status, 404);
  b.erase("model");
  const auto tier = http_post(port(), "/v1/route", b.dump(), {{"x-foreshore-tier", "nope"}});
  EXPECT_EQ(tier.status, 400) << tier.body;
  EXPECT_EQ(tier.json()["error"]["code"], "unknown_tier");
  const auto legacy = http_post(port(), "/v1/completions",
                                R"({"model":"cloud","prompt":"Once upon","max_tokens":8})");
  ASSERT_EQ(legacy.status, 200) << legacy.body;
  EXPECT_EQ(legacy.json()["object"], "text_completion");
  EXPECT_EQ(legacy.header("x-foreshore-tier"), "cloud");
}

// The next turn of a conversation reuses the edge's cache of the last one,
// and says so as OpenAI does: usage.prompt_tokens_details.cached_tokens.
TEST_F(GatewayE2E, ReusedPromptTokensAreReported) {
  json b = {{"messages", {{{"role", "user"}, {"content", "Once upon a time there was a girl"}}}},
            {"max_tokens", 8},
            {"temperature", 0}};
  const auto first = chat(port(), b, "edge");
  ASSERT_EQ(first.status, 200) << first.body;
  const json usage = first.json()["usage"];
  b["messages"].push_back(first.json()["choices"][0]["message"]);
  b["messages"].push_back({{"role", "user"}, {"content", "And then?"}});
  const auto next = chat(port(), b, "edge");
  ASSERT_EQ(next.status, 200) << next.body;
  const int cached = next.json()["usage"]["prompt_tokens_details"]["cached_tokens"];
  EXPECT_GE(cached, usage["prompt_tokens"].get<int>() - 1) << next.body;
  EXPECT_LT(cached, next.json()["usage"]["prompt_tokens"].get<int>()) << next.body;
}

TEST_F(GatewayE2E, ModelsHealthReadyMetrics) {
  auto r = http_get(port(), "/v1/models");
  ASSERT_EQ(r.status, 200);
  std::set<std::string> ids;
  const json models = r.json();
  for (const auto& m : models["data"]) ids.insert(m["id"].get<std::string>());
  EXPECT_TRUE(ids.contains("edge") && ids.contains("cloud") && ids.contains("gpt-4o-mini") &&
              ids.contains("stories260K"))
      << r.body;
  // The policy names a client may send are listed too.
  for (const char* policy :
       {"foreshore", "foreshore/threshold", "foreshore/cascade", "foreshore/consistency",
        "foreshore/optimize", "foreshore/edge", "foreshore/cloud"}) {
    EXPECT_TRUE(ids.contains(policy)) << policy << " missing in " << r.body;
  }
  // Each listed model can be retrieved by its id; others are a 404.
  for (const auto& m : models["data"]) {
    const auto one = http_get(port(), "/v1/models/" + m["id"].get<std::string>());
    ASSERT_EQ(one.status, 200) << one.body;
    EXPECT_EQ(one.json(), m);
  }
  const auto missing = http_get(port(), "/v1/models/no-such/model");
  expect_error(missing, 404);
  EXPECT_EQ(missing.json()["error"]["code"], "model_not_found");
  EXPECT_EQ(http_get(port(), "/healthz").status, 200);
  EXPECT_EQ(http_get(port(), "/readyz").status, 200);
  ASSERT_EQ(chat(port(), chat_body(false), "cloud").status, 200);
  r = http_get(port(), "/metrics");
  ASSERT_EQ(r.status, 200);
  EXPECT_NE(r.header("Content-Type").find("text/plain"), std::string::npos);
  for (const char* needle :
       {"# TYPE foreshore_requests_total counter",
        "foreshore_requests_total{tier=\"cloud\",endpoint=\"chat\",status=\"200\"}",
        "# TYPE foreshore_request_duration_seconds histogram",
        "foreshore_request_duration_seconds_bucket{tier=\"cloud\",le=\"+Inf\"}",
        "foreshore_tokens_total{tier=\"cloud\",type=\"completion\"}",
        "foreshore_requests_in_flight"}) {
    EXPECT_NE(r.body.find(needle), std::string::npos) << needle << "\n" << r.body;
  }
}

TEST_F(GatewayE2E, ClientErrors) {
  expect_error(http_post(port(), "/v1/chat/completions", "{nope"), 400);
  json b = chat_body(false);
  b["n"] = 129;
  auto r = chat(port(), b, "");
  expect_error(r, 400);
  EXPECT_EQ(r.json()["error"]["param"], "n");
  b = chat_body(false);
  b["model"] = "gpt-9";
  r = chat(port(), b, "");
  expect_error(r, 404);
  EXPECT_EQ(r.json()["error"]["code"], "model_not_found");
  b = chat_body(false);
  b["messages"][0]["content"] = std::string(70000, 'x');
  expect_error(chat(port(), b, ""), 413);
  EXPECT_EQ(chat(port(), chat_body(false), "edge").status, 200);
}

TEST_F(GatewayE2E, ClientDisconnectMidStreamLeavesTheServerHealthy) {
  for (const std::string tier : {"edge", "cloud"}) {
    SCOPED_TRACE(tier);
    httplib::Client client("127.0.0.1", port());
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/chat/completions";
    req.body = chat_body(true, 400).dump();
    req.set_header("Content-Type", "application/json");
    req.set_header("x-foreshore-tier", tier);
    int chunks = 0;
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 2; };
    client.send(req);
    EXPECT_GE(chunks, 1);
  }
  EXPECT_EQ(chat(port(), chat_body(false), "edge").status, 200);
  EXPECT_EQ(chat(port(), chat_body(true), "cloud").status, 200);
  EXPECT_EQ(http_get(port(), "/healthz").status, 200);
}

TEST(GatewayE2EAuth, BearerKeys) {
  ServeProcess gw({"-m", "stories260K", "--api-keys-env", "FSH_E2E_KEYS", "--quiet"},
                  {"FORESHORE_MODEL_PATH=" + shared_models_dir(), "FSH_E2E_KEYS=k-one,k-two"});
  ASSERT_TRUE(gw.ok()) << gw.process().stderr_text();
  expect_error(chat(gw.port(), chat_body(false), ""), 401);
  expect_error(chat(gw.port(), chat_body(false), "", {{"Authorization", "Bearer wrong"}}), 401);
  EXPECT_EQ(chat(gw.port(), chat_body(false), "", {{"Authorization", "Bearer k-two"}}).status, 200);
}

TEST(GatewayE2EStartup, BadConfigFailsWithTheKeyPath) {
  const std::string path =
      write_config("tiers:\n  cloud:\n    kind: openai\n    model: m\n    endpoint: htp://x\n");
  auto p = Process::start({foreshore_binary(), "serve", "--config", path});
  ASSERT_TRUE(p);
  EXPECT_EQ(p->wait(30s), 2);
  EXPECT_NE(p->stderr_text().find(path + ": tiers.cloud.endpoint: 'htp://x' is not an http(s) URL"),
            std::string::npos)
      << p->stderr_text();
  std::remove(path.c_str());
}

// ---- llama.cpp's llama-server as a real cloud tier ----------------------------

// llama-server as bench/llama_cpp_build.sh builds it (scripts/test.sh does),
// or $FSH_LLAMA_SERVER; empty when neither exists.
std::string llama_server_binary() {
  if (const char* set = std::getenv("FSH_LLAMA_SERVER"); set != nullptr && *set != '\0') {
    return set;
  }
  const std::string built = std::string(FSH_SOURCE_DIR) + "/build/llama.cpp/bin/llama-server";
  return access(built.c_str(), X_OK) == 0 ? built : std::string();
}

// A loopback port nothing listens on now (llama-server cannot report one it
// chose itself).
int unused_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

// The gateway in front of llama.cpp's own server, on the same weights as its
// edge: routed, streamed and legacy requests come back whole, usage counted,
// and the greedy answer is the edge's own, token for token.
TEST(GatewayLlamaServer, LlamaServerServesAsTheCloudTier) {
  const std::string server = llama_server_binary();
  if (server.empty()) {
    GTEST_SKIP()
        << "llama-server is not built: run bench/llama_cpp_build.sh (scripts/test.sh does)";
  }
  const std::string model = shared_models_dir() + "/stories260K.gguf";
  // The port is free when chosen but may be taken (by another test's server
  // or client) before llama-server binds it: then llama-server exits and the
  // next attempt takes another port. The test fails only when every attempt
  // did; /props is llama-server's own, so another server on the port is never
  // taken for it.
  std::unique_ptr<Process> llama;
  int port = 0;
  std::string attempts;
  for (int attempt = 1; attempt <= 5 && !llama; ++attempt) {
    port = unused_port();
    auto p =
        Process::start({server, "-m", model, "--host", "127.0.0.1", "--port", std::to_string(port),
                        "-c", "512", "-t", "1", "-np", "1", "--no-webui"});
    ASSERT_TRUE(p);
    for (int i = 0; i < 600; ++i) {
      if (p->wait(std::chrono::milliseconds(100))) break;  // exited: the port was taken
      if (http_get(port, "/health").status == 200 && http_get(port, "/props").status == 200) {
        llama = std::move(p);
        break;
      }
    }
    if (!llama) {
      attempts += "attempt " + std::to_string(attempt) + " on port " + std::to_string(port) +
                  ":\n" + p->stderr_text().substr(0, 2000) + "\n";
    }
  }
  ASSERT_TRUE(llama) << "llama-server did not start:\n" << attempts;
  const std::string config = write_config(
      edge_and_cloud_tiers("stories260K", "http://127.0.0.1:" + std::to_string(port) + "/v1"));
  ServeProcess gateway({"--config", config}, model_env());
  ASSERT_TRUE(gateway.ok()) << gateway.process().stderr_text();

  const auto whole = chat(gateway.port(), chat_body(false), "cloud");
  ASSERT_EQ(whole.status, 200) << whole.body;
  EXPECT_EQ(whole.header("x-foreshore-tier"), "cloud");
  const json answer = whole.json();
  EXPECT_FALSE(answer["choices"][0]["message"]["content"].get<std::string>().empty()) << whole.body;
  EXPECT_GT(answer["usage"]["completion_tokens"].get<int>(), 0) << whole.body;

  const auto streamed = chat(gateway.port(), chat_body(true), "cloud");
  ASSERT_EQ(streamed.status, 200) << streamed.body;
  const Stream s = read_stream(streamed);
  EXPECT_TRUE(s.done) << streamed.body;
  EXPECT_TRUE(s.error.is_null()) << streamed.body;
  EXPECT_EQ(s.text, answer["choices"][0]["message"]["content"]) << "greedy: streamed as whole";

  // Raw text, no chat template on either side: the same weights, greedy,
  // give the same tokens on llama.cpp and on the embedded engine.
  const json legacy = {{"prompt", "Once upon a time"}, {"max_tokens", 16}, {"temperature", 0}};
  const auto on_llama =
      http_post(gateway.port(), "/v1/completions", legacy.dump(), {{"x-foreshore-tier", "cloud"}});
  const auto on_edge =
      http_post(gateway.port(), "/v1/completions", legacy.dump(), {{"x-foreshore-tier", "edge"}});
  ASSERT_EQ(on_llama.status, 200) << on_llama.body;
  ASSERT_EQ(on_edge.status, 200) << on_edge.body;
  EXPECT_FALSE(on_llama.json()["choices"][0]["text"].get<std::string>().empty()) << on_llama.body;
  EXPECT_EQ(on_llama.json()["choices"][0]["text"], on_edge.json()["choices"][0]["text"]);

  // Data that must stay on the device never reaches it: the edge answers.
  json secret = chat_body(false);
  secret["messages"][0]["content"] = "My SSN is 536-22-8764, write me a story";
  const auto kept = chat(gateway.port(), secret, "");
  ASSERT_EQ(kept.status, 200) << kept.body;
  EXPECT_EQ(kept.header("x-foreshore-tier"), "edge");
  std::remove(config.c_str());
}

TEST(GatewayE2EStartup, SigtermStopsCleanly) {
  ServeProcess gw({"-m", "stories260K"}, model_env());
  ASSERT_TRUE(gw.ok()) << gw.process().stderr_text();
  EXPECT_EQ(gw.process().terminate(SIGTERM, 10s), 0);
}

// The decision log is bounded: past decision_log_max_mb it moves to PATH.1
// and starts again, so a retry storm cannot fill the disk.
TEST(GatewayDecisionLog, RotatesPastItsLimit) {
  const std::string log = temp_path(".decisions.jsonl");
  const std::string config =
      write_config("server:\n  decision_log: " + log + "\n  decision_log_max_mb: 0.004\n" +
                   "tiers:\n  edge: {kind: embedded, model: stories260K, threads: 1}\n");
  ServeProcess gw({"--config", config}, model_env());
  ASSERT_TRUE(gw.ok()) << gw.process().stderr_text();
  for (int i = 0; i < 12; ++i) ASSERT_EQ(chat(gw.port(), chat_body(false, 2), "").status, 200);
  ASSERT_TRUE(std::filesystem::exists(log + ".1"));
  EXPECT_LE(std::filesystem::file_size(log), 4u * 1024 * 1024 / 1000 + 1);
  EXPECT_LE(std::filesystem::file_size(log + ".1"), 4u * 1024 * 1024 / 1000 + 1);
  size_t lines = 0;
  for (const std::string& path : {log, log + ".1"}) {
    std::ifstream in(path);
    for (std::string line; std::getline(in, line); ++lines) {
      EXPECT_FALSE(json::parse(line, nullptr, false).is_discarded()) << line;
    }
  }
  EXPECT_GT(lines, 2u);
  std::remove(log.c_str());
  std::remove((log + ".1").c_str());
  std::remove(config.c_str());
}

// A learner state this start cannot read (a newer version's) stops the
// start and stays as it was: it is not replaced, at exit, by an empty learner.
TEST(GatewayLearning, AStateFileItCannotReadIsLeftAsItWas) {
  const std::string state = temp_path(".learner.json");
  const std::string newer =
      R"({"format": "foreshore.router-learner", "file_version": 99, "version": 7})";
  std::ofstream(state) << newer;
  const std::string config = write_config(
      "tiers:\n  edge: {kind: embedded, model: stories260K, threads: 1}\n"
      "routing:\n  learning: {enabled: true, state: " +
      state + "}\n");
  const FinishedRun r = run_foreshore({"serve", "--config", config, "--port", "0"},
                                      std::chrono::seconds(60), model_env());
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("file_version"), std::string::npos) << r.err;
  std::ifstream in(state);
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(in), {}), newer);
  EXPECT_FALSE(std::filesystem::exists(state + ".v7"));
  EXPECT_FALSE(std::filesystem::exists(state + ".v0"));
  std::remove(state.c_str());
  std::remove(config.c_str());
}

// Router learning: feedback on answers (by decision id), shadow verdicts and
// the state file that outlives the process, through the real binary.
TEST(GatewayLearning, FeedbackShadowVerdictsStatusAndStateFile) {
  ServeProcess cloud({"-m", "stories260K", "--quiet"}, model_env());
  ASSERT_TRUE(cloud.ok()) << cloud.process().stderr_text();
  const std::string state = temp_path(".learner.json");
  const std::string config = write_config(
      "server:\n  shadow_fraction: 1.0\n" + edge_and_cloud_tiers("stories260K", cloud.base_url()) +
      "routing:\n  learning:\n    enabled: true\n    state: " + state +
      "\n    save_every_labels: 1\n");
  auto gw =
      std::make_unique<ServeProcess>(std::vector<std::string>{"--config", config}, model_env());
  ASSERT_TRUE(gw->ok()) << gw->process().stderr_text();
  auto ask = [&](const std::string& model, httplib::Headers headers = {}) {
    json body = chat_body(false, 8);
    body["model"] = model;
    const HttpResult r = chat(gw->port(), body, "", std::move(headers));
    EXPECT_EQ(r.status, 200) << r.body;
    return r.header("x-foreshore-decision-id");
  };
  auto feedback = [&](const json& body) {
    return http_post(gw->port(), "/v1/feedback", body.dump());
  };

  // An edge answer: the thumbs say whether the edge was adequate.
  const std::string edge_id = ask("foreshore/edge");
  ASSERT_FALSE(edge_id.empty());
  HttpResult r = feedback({{"decision_id", edge_id}, {"thumbs", "down"}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json()["learned"], true);
  // Device-only data is never shadowed; its feedback is learned on the device.
  const std::string private_id = ask("foreshore/edge", {{"x-foreshore-data-class", "device-only"}});
  r = feedback({{"decision_id", private_id}, {"score", 0.9}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json()["learned"], true);
  // A cloud answer says nothing about the edge: accepted, not learned.
  r = feedback({{"decision_id", ask("foreshore/cloud")}, {"thumbs", "up"}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json()["learned"], false);
  EXPECT_TRUE(r.json().contains("reason"));
  // Unknown ids and malformed bodies are named.
  expect_error(feedback({{"decision_id", "dec-nope"}, {"thumbs", "up"}}), 404);
  expect_error(feedback({{"decision_id", edge_id}, {"score", 7}}), 400);
  expect_error(http_post(gw->port(), "/v1/feedback", "not json"), 400);
  EXPECT_EQ(http_post(gw->port(), "/v1/feedback", "not json").json()["error"]["code"],
            "invalid_json");
  // One verdict per answer: a second one, or two in one body, would weigh
  // one answer as many labels.
  r = feedback({{"decision_id", edge_id}, {"thumbs", "down"}});
  EXPECT_EQ(r.status, 409) << r.body;
  EXPECT_EQ(r.json()["error"]["code"], "feedback_already_given") << r.body;
  expect_error(feedback({{"decision_id", private_id}, {"thumbs", "up"}, {"score", 0}}), 400);
  r = http_post(gw->port(), "/v1/feedback",
                R"({"decision_id": "x", "decision_id": ")" + private_id + R"(", "score": 1})");
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_EQ(r.json()["error"]["code"], "duplicate_field") << r.body;

  // The public edge answers were shadowed on the cloud; the verdicts arrive
  // on the sampler's thread, the labels on the learner's.
  json status;
  for (int i = 0; i < 300; ++i) {
    status = http_get(gw->port(), "/v1/router/status").json();
    if (status["labels"]["shadow"].get<int>() >= 1) break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(status["learning"], true);
  EXPECT_EQ(status["labels"]["feedback"], 2) << status.dump();
  EXPECT_EQ(status["labels"]["shadow"], 1) << status.dump();  // the device-only one never
  const std::string metrics = http_get(gw->port(), "/metrics").body;
  EXPECT_NE(metrics.find("foreshore_router_labels{source=\"feedback\"} 2"), std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("foreshore_router_learned_threshold"), std::string::npos);
  EXPECT_EQ(status["neighbours"], true) << status.dump();
  EXPECT_EQ(status["form_features"], true) << status.dump();
  EXPECT_EQ(status["form_weights"].size(), 12u) << status.dump();
  EXPECT_EQ(status["kept_labels"], 3) << status.dump();  // 2 feedback, 1 shadow
  EXPECT_TRUE(status["neighbour_blend"].is_number()) << status.dump();
  EXPECT_NE(metrics.find("foreshore_router_kept_labels 3"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("foreshore_router_neighbour_blend"), std::string::npos) << metrics;

  // A config reload (SIGHUP) keeps what was learned and the decisions still
  // awaiting feedback (device-only: never shadowed, so the counts stay known).
  const std::string before_reload =
      ask("foreshore/edge", {{"x-foreshore-data-class", "device-only"}});
  ASSERT_EQ(::kill(gw->process().pid(), SIGHUP), 0);
  for (int i = 0; i < 100; ++i) {
    if (gw->process().stderr_text().find("SIGHUP: config reloaded") != std::string::npos) break;
    std::this_thread::sleep_for(100ms);
  }
  ASSERT_NE(gw->process().stderr_text().find("SIGHUP: config reloaded"), std::string::npos);
  EXPECT_EQ(http_get(gw->port(), "/v1/router/status").json()["labels"]["feedback"], 2);
  r = feedback({{"decision_id", before_reload}, {"thumbs", "up"}});
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json()["learned"], true);

  // Stopped, the gateway leaves its state for the next start and for
  // `router status`, with the earlier version kept for rollback.
  EXPECT_EQ(gw->process().terminate(SIGTERM, 10s), 0);
  gw.reset();
  const FinishedRun st = run_foreshore({"router", "status", "--state", state, "--json"});
  ASSERT_EQ(st.status, 0) << st.err;
  const json saved = json::parse(st.out);
  EXPECT_EQ(saved["labels"]["feedback"], 3) << st.out;
  EXPECT_EQ(saved["labels"]["shadow"], 1) << st.out;
  EXPECT_EQ(saved["kept_labels"], 4) << st.out;
  EXPECT_TRUE(saved["neighbour_blend"].is_number()) << st.out;
  EXPECT_TRUE(saved["form_weights"].is_object()) << st.out;
  ASSERT_FALSE(saved["saved_versions"].empty()) << st.out;
  const FinishedRun back =
      run_foreshore({"router", "status", "--state", state, "--rollback",
                     std::to_string(saved["saved_versions"][0].get<uint64_t>()), "--json"});
  EXPECT_EQ(back.status, 0) << back.err;
  // The state rolled back from is kept: the rollback can be undone.
  const json after = json::parse(back.out);
  EXPECT_NE(
      std::find(after["saved_versions"].begin(), after["saved_versions"].end(), saved["version"]),
      after["saved_versions"].end())
      << back.out;
  EXPECT_NE(run_foreshore({"router", "status", "--state", state, "--rollback", "-1"}).status, 0);

  gw = std::make_unique<ServeProcess>(std::vector<std::string>{"--config", config}, model_env());
  ASSERT_TRUE(gw->ok()) << gw->process().stderr_text();
  // The learner's counts came back with the state (the file as rolled back).
  const json resumed = http_get(gw->port(), "/v1/router/status").json();
  EXPECT_EQ(resumed["version"], saved["saved_versions"][0]) << resumed.dump();
  gw.reset();
  for (const auto& v : after["saved_versions"]) {
    std::remove((state + ".v" + std::to_string(v.get<uint64_t>())).c_str());
  }
  std::remove(state.c_str());
  std::remove(config.c_str());
}

// A gateway whose cloud tier is the fault-injecting server.
class GatewayFaults : public ::testing::Test {
 protected:
  void start(const std::string& server_section) {
    config_ =
        write_config(server_section +
                     "tiers:\n"
                     "  cloud:\n"
                     "    kind: openai\n"
                     "    model: fault-model\n"
                     "    endpoint: " +
                     upstream_.base_url() +
                     "\n"
                     "    timeouts: {connect_ms: 1000, first_byte_ms: 800, total_ms: 5000}\n");
    gw_ =
        std::make_unique<ServeProcess>(std::vector<std::string>{"--config", config_}, model_env());
    ASSERT_TRUE(gw_->ok()) << gw_->process().stderr_text();
  }
  void TearDown() override {
    gw_.reset();
    std::remove(config_.c_str());
  }
  HttpResult ask(bool stream) { return chat(gw_->port(), chat_body(stream), "cloud"); }

  FaultServer upstream_;
  std::string config_;
  std::unique_ptr<ServeProcess> gw_;
};

TEST_F(GatewayFaults, NormalUpstreamPassesThrough) {
  start("");
  const auto r = ask(false);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json()["choices"][0]["message"]["content"], "echo: Once upon a time");
  const auto s = read_stream(ask(true));
  EXPECT_EQ(s.text, "echo: Once upon a time");
  EXPECT_TRUE(s.done);
}

TEST_F(GatewayFaults, Upstream500) {
  start("");
  upstream_.set_mode(FaultMode::kStatus500);
  for (bool stream : {false, true}) {
    const auto r = ask(stream);
    expect_error(r, 502);
    EXPECT_EQ(r.header("x-foreshore-tier"), "cloud");
  }
  upstream_.set_mode(FaultMode::kNormal);
  EXPECT_EQ(ask(false).status, 200);
}

TEST_F(GatewayFaults, Upstream429PassesRetryAfterOn) {
  start("");
  upstream_.set_mode(FaultMode::kStatus429);
  upstream_.set_retry_after("7");
  for (bool stream : {false, true}) {
    const auto r = ask(stream);
    expect_error(r, 429);
    EXPECT_EQ(r.header("Retry-After"), "7");
  }
}

TEST_F(GatewayFaults, GarbageSseBecomesAnErrorEvent) {
  start("");
  upstream_.set_mode(FaultMode::kGarbageSse);
  const auto r = ask(true);
  ASSERT_EQ(r.status, 200) << r.body;
  const Stream s = read_stream(r);
  EXPECT_FALSE(s.error.is_null()) << r.body;
  EXPECT_FALSE(s.done) << "a broken stream must not end like a complete one";
  expect_error(ask(false), 502);
}

TEST_F(GatewayFaults, DeathMidStreamBecomesAnErrorEvent) {
  start("");
  upstream_.set_reply("one two three four five six seven eight");
  upstream_.set_mode(FaultMode::kDieMidStream);
  const auto r = ask(true);
  ASSERT_EQ(r.status, 200) << r.body;
  const Stream s = read_stream(r);
  EXPECT_FALSE(s.error.is_null()) << r.body;
  EXPECT_FALSE(s.done);
  EXPECT_FALSE(s.text.empty());
  upstream_.set_mode(FaultMode::kNormal);
  EXPECT_EQ(ask(false).status, 200);
}

TEST_F(GatewayFaults, BlackHoleAnswers504WithinTheTimeout) {
  start("server:\n  request_timeout_ms: 1500\n");
  upstream_.set_mode(FaultMode::kBlackHole);
  for (bool stream : {false, true}) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = ask(stream);
    const auto took = std::chrono::steady_clock::now() - t0;
    expect_error(r, 504);
    EXPECT_LT(took, 4s);  // first_byte_ms is 800, the request deadline 1500
  }
  upstream_.set_mode(FaultMode::kNormal);
  EXPECT_EQ(ask(false).status, 200);
}

TEST_F(GatewayFaults, OverloadAnswers429) {
  start("server:\n  max_concurrent_requests: 1\n");
  // A stream of ten pieces 300 ms apart holds the only slot for about 3 s,
  // long enough for the second request to arrive even on a loaded machine.
  upstream_.set_reply("a b c d e f g h i j");
  upstream_.set_chunk_delay(300ms);
  std::thread slow([&] { EXPECT_EQ(ask(true).status, 200); });
  for (int i = 0; i < 1000 && upstream_.received().empty(); ++i) {
    std::this_thread::sleep_for(5ms);
  }
  const auto r = ask(false);
  expect_error(r, 429);
  EXPECT_FALSE(r.header("Retry-After").empty());
  slow.join();
}

TEST_F(GatewayFaults, CancelledStreamStopsTheUpstream) {
  start("");
  std::string words;
  for (int i = 0; i < 100; ++i) words += "w ";
  upstream_.set_reply(words);
  upstream_.set_chunk_delay(30ms);
  {
    httplib::Client client("127.0.0.1", gw_->port());
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/chat/completions";
    req.body = chat_body(true).dump();
    req.set_header("Content-Type", "application/json");
    int chunks = 0;
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 3; };
    const auto t0 = std::chrono::steady_clock::now();
    client.send(req);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  }
  // The gateway notices the client left and releases its slot: the 499 shows
  // in the metrics well before the upstream would have finished (3 s).
  bool seen = false;
  for (int i = 0; i < 100 && !seen; ++i) {
    std::this_thread::sleep_for(20ms);
    seen = http_get(gw_->port(), "/metrics").body.find("status=\"499\"} 1") != std::string::npos;
  }
  EXPECT_TRUE(seen) << http_get(gw_->port(), "/metrics").body;
  upstream_.set_chunk_delay(0ms);
  EXPECT_EQ(ask(false).status, 200);
}

// Function calling and structured output: an edge tier that cannot honour
// them and a cloud tier (the fault server) that answers tool calls.
class GatewayTools : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = write_config(edge_and_cloud_tiers("fault-model", upstream_.base_url()) +
                           "    timeouts: {connect_ms: 1000, first_byte_ms: 2000, total_ms: 5000}\n"
                           "routing:\n"
                           "  policy: edge\n");
    gw_ = std::make_unique<ServeProcess>(std::vector<std::string>{"--config", config_, "--quiet"},
                                         model_env());
    ASSERT_TRUE(gw_->ok()) << gw_->process().stderr_text();
  }
  void TearDown() override {
    gw_.reset();
    std::remove(config_.c_str());
  }

  static json tools() {
    return json::array(
        {{{"type", "function"},
          {"function",
           {{"name", "lookup_order"},
            {"description", "Find an order by its number"},
            {"parameters",
             {{"type", "object"}, {"properties", {{"text", {{"type", "string"}}}}}}}}}}});
  }
  static json tool_request(bool stream) {
    json b = {{"model", "foreshore"},
              {"messages", {{{"role", "user"}, {"content", "where is order 42"}}}},
              {"tools", tools()},
              {"tool_choice", "auto"},
              {"parallel_tool_calls", false},
              {"max_tokens", 16}};
    if (stream) b["stream"] = true;
    return b;
  }
  HttpResult post(const json& body, const httplib::Headers& headers = {}) {
    return http_post(gw_->port(), "/v1/chat/completions", body.dump(), headers);
  }
  json last_upstream_body() const {
    const auto bodies = upstream_.received_bodies();
    return bodies.empty() ? json() : json::parse(bodies.back());
  }

  FaultServer upstream_;
  std::string config_;
  std::unique_ptr<ServeProcess> gw_;
};

// The routing policy says edge, but an edge answer would ignore the tools:
// the cloud serves, gets the tools as sent, and its call comes back whole.
TEST_F(GatewayTools, ToolCallsGoToTheCloudAndComeBack) {
  const auto r = post(tool_request(false));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-foreshore-tier"), "cloud");
  const json choice = r.json()["choices"][0];
  EXPECT_EQ(choice["finish_reason"], "tool_calls");
  EXPECT_TRUE(choice["message"]["content"].is_null()) << r.body;
  ASSERT_EQ(choice["message"]["tool_calls"].size(), 1u) << r.body;
  const json call = choice["message"]["tool_calls"][0];
  EXPECT_EQ(call["id"], "call_fault_0");
  EXPECT_EQ(call["type"], "function");
  EXPECT_EQ(call["function"]["name"], "lookup_order");
  EXPECT_EQ(json::parse(call["function"]["arguments"].get<std::string>())["text"],
            "where is order 42");

  const json sent = last_upstream_body();
  EXPECT_EQ(sent["tools"], tools());
  EXPECT_EQ(sent["tool_choice"], "auto");
  EXPECT_EQ(sent["parallel_tool_calls"], false);

  const auto route = http_post(gw_->port(), "/v1/route", tool_request(false).dump());
  ASSERT_EQ(route.status, 200) << route.body;
  EXPECT_EQ(route.json()["signals"]["edge_unsupported"], "tools") << route.body;
}

// Streamed, the call arrives in fragments (id and name, then pieces of the
// arguments) that a client joins by index, as with OpenAI.
TEST_F(GatewayTools, StreamedToolCallFragmentsPassThrough) {
  const auto r = post(tool_request(true));
  ASSERT_EQ(r.status, 200) << r.body;
  const Stream s = read_stream(r);
  EXPECT_TRUE(s.done) << r.body;
  std::string name, arguments, id, finish;
  int fragments = 0;
  for (const json& chunk : s.chunks) {
    for (const json& c : chunk["choices"]) {
      if (c["finish_reason"].is_string()) finish = c["finish_reason"];
      if (!c.contains("delta") || !c["delta"].contains("tool_calls")) continue;
      for (const json& f : c["delta"]["tool_calls"]) {
        ++fragments;
        EXPECT_EQ(f["index"], 0);
        if (f.contains("id")) id = f["id"];
        if (f["function"].contains("name")) name += f["function"]["name"].get<std::string>();
        arguments += f["function"]["arguments"].get<std::string>();
      }
    }
  }
  EXPECT_GT(fragments, 2) << r.body;
  EXPECT_EQ(id, "call_fault_0");
  EXPECT_EQ(name, "lookup_order");
  EXPECT_EQ(arguments, R"({"text":"where is order 42"})");
  EXPECT_EQ(finish, "tool_calls");
  EXPECT_TRUE(s.text.empty()) << s.text;
}

// The second turn carries the call and its result; the cloud sees both.
TEST_F(GatewayTools, ToolResultsReachTheCloudWhole) {
  const json call = {{"id", "call_7"},
                     {"type", "function"},
                     {"function", {{"name", "lookup_order"}, {"arguments", R"({"text":"42"})"}}}};
  json b = {{"model", "foreshore/cloud"},
            {"messages",
             {{{"role", "user"}, {"content", "where is order 42"}},
              {{"role", "assistant"}, {"content", nullptr}, {"tool_calls", {call}}},
              {{"role", "tool"}, {"tool_call_id", "call_7"}, {"content", "shipped today"}},
              {{"role", "user"}, {"content", "and when does it arrive"}}}},
            {"tools", tools()},
            {"tool_choice", "none"},
            {"max_tokens", 16}};
  const auto r = post(b);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.json()["choices"][0]["message"]["content"], "echo: and when does it arrive");
  const json sent = last_upstream_body()["messages"];
  ASSERT_EQ(sent.size(), 4u);
  EXPECT_EQ(sent[1]["tool_calls"], json::array({call}));
  EXPECT_TRUE(sent[1]["content"].is_null());
  EXPECT_EQ(sent[2]["role"], "tool");
  EXPECT_EQ(sent[2]["tool_call_id"], "call_7");
  EXPECT_EQ(last_upstream_body()["tool_choice"], "none");
}

// JSON mode the edge can do (its sampling keeps to one JSON object); a JSON
// schema only the cloud.
TEST_F(GatewayTools, JsonModeOnTheEdgeJsonSchemaOnTheCloud) {
  json b = {{"model", "foreshore"},
            {"messages", {{{"role", "user"}, {"content", "Once upon a time"}}}},
            {"response_format", {{"type", "json_object"}}},
            {"max_tokens", 24}};
  for (bool stream : {false, true}) {
    b["stream"] = stream;
    const auto r = post(b);
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.header("x-foreshore-tier"), "edge");
    const std::string text = stream
                                 ? read_stream(r).text
                                 : r.json()["choices"][0]["message"]["content"].get<std::string>();
    ASSERT_FALSE(text.empty()) << r.body;
    EXPECT_EQ(text[0], '{') << text;
  }
  EXPECT_TRUE(upstream_.received_bodies().empty());

  b["stream"] = false;
  b["response_format"] = {
      {"type", "json_schema"},
      {"json_schema", {{"name", "story"}, {"schema", {{"type", "object"}}}, {"strict", true}}}};
  const auto r = post(b);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-foreshore-tier"), "cloud");
  EXPECT_EQ(last_upstream_body()["response_format"], b["response_format"]);
}

// What only the cloud can do is never answered by the edge instead: not when
// the client names the edge, not when the data may not leave the device, not
// when the cloud fails (a degraded edge answer would drop the tools unseen).
TEST_F(GatewayTools, TheEdgeNeverStandsInForTools) {
  for (bool stream : {false, true}) {
    const auto forced = post(tool_request(stream), {{"x-foreshore-tier", "edge"}});
    expect_error(forced, 400);
    EXPECT_EQ(forced.json()["error"]["code"], "unsupported_on_edge") << forced.body;
    EXPECT_NE(forced.body.find("tools"), std::string::npos) << forced.body;

    const auto private_data =
        post(tool_request(stream), {{"x-foreshore-data-class", "device-only"}});
    expect_error(private_data, 400);
    EXPECT_NE(private_data.body.find("device-only"), std::string::npos) << private_data.body;
  }
  EXPECT_TRUE(upstream_.received_bodies().empty());

  upstream_.set_mode(FaultMode::kStatus500);
  const auto failed = post(tool_request(false));
  expect_error(failed, 502);
  EXPECT_EQ(failed.header("x-foreshore-tier"), "cloud");
}

// n > 1: the edge makes one completion, so the cloud serves and every
// choice comes back, in order, plain and streamed, chat and completions.
TEST_F(GatewayTools, SeveralChoicesGoToTheCloudAndAllComeBack) {
  const json chat = {{"model", "foreshore"},
                     {"messages", {{{"role", "user"}, {"content", "name a colour"}}}},
                     {"n", 3}};
  const auto r = post(chat);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-foreshore-tier"), "cloud");
  EXPECT_EQ(last_upstream_body()["n"], 3);
  const json choices = r.json()["choices"];
  ASSERT_EQ(choices.size(), 3u) << r.body;
  EXPECT_EQ(choices[0]["message"]["content"], "echo: name a colour");
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(choices[i]["index"], i);
    EXPECT_EQ(choices[i]["finish_reason"], "stop");
  }
  EXPECT_EQ(choices[2]["message"]["content"], "(choice 2) echo: name a colour");

  json streamed = chat;
  streamed["stream"] = true;
  const auto sr = post(streamed);
  ASSERT_EQ(sr.status, 200) << sr.body;
  const Stream s = read_stream(sr);
  EXPECT_TRUE(s.done) << sr.body;
  std::map<int, std::string> text, finish;
  for (const json& chunk : s.chunks) {
    for (const json& c : chunk["choices"]) {
      const int index = c["index"].get<int>();
      if (c["finish_reason"].is_string()) finish[index] = c["finish_reason"];
      if (c.contains("delta") && c["delta"].contains("content") &&
          c["delta"]["content"].is_string()) {
        text[index] += c["delta"]["content"].get<std::string>();
      }
    }
  }
  ASSERT_EQ(text.size(), 3u) << sr.body;
  EXPECT_EQ(text[0], "echo: name a colour");
  EXPECT_EQ(text[1], "(choice 1) echo: name a colour");
  EXPECT_EQ(text[2], "(choice 2) echo: name a colour");
  EXPECT_EQ(finish.size(), 3u) << sr.body;

  const json legacy = {{"model", "foreshore"}, {"prompt", "a haiku"}, {"n", 2}};
  const auto lr = http_post(gw_->port(), "/v1/completions", legacy.dump());
  ASSERT_EQ(lr.status, 200) << lr.body;
  ASSERT_EQ(lr.json()["choices"].size(), 2u) << lr.body;
  EXPECT_EQ(lr.json()["choices"][1]["text"], "(choice 1) echo: a haiku");

  // The edge cannot stand in: forced there, or with data that must stay.
  const auto forced = post(chat, {{"x-foreshore-tier", "edge"}});
  expect_error(forced, 400);
  EXPECT_NE(forced.body.find("n > 1"), std::string::npos) << forced.body;
  const size_t sent = upstream_.received_bodies().size();
  const auto private_data = post(chat, {{"x-foreshore-data-class", "device-only"}});
  expect_error(private_data, 400);
  EXPECT_EQ(upstream_.received_bodies().size(), sent);
  expect_error(post(json{{"messages", chat["messages"]}, {"n", 129}}), 400);
}

// Fields the gateway does not read itself reach the cloud as sent; an edge
// answer names those it ignored.
TEST_F(GatewayTools, OtherFieldsPassThroughOrAreNamedAsIgnored) {
  json b = {{"model", "cloud"},
            {"messages", {{{"role", "user"}, {"content", "Once upon a time"}}}},
            {"max_tokens", 8},
            {"logit_bias", {{"1234", -100}}},
            {"reasoning_effort", "low"},
            {"store", false},
            {"user", "user-17"},
            {"service_tier", nullptr}};
  const auto cloud = post(b);
  ASSERT_EQ(cloud.status, 200) << cloud.body;
  EXPECT_EQ(cloud.header("x-foreshore-ignored-params"), "");
  const json sent = last_upstream_body();
  EXPECT_EQ(sent["logit_bias"], b["logit_bias"]);
  EXPECT_EQ(sent["reasoning_effort"], "low");
  EXPECT_EQ(sent["store"], false);
  EXPECT_EQ(sent["user"], "user-17");
  EXPECT_FALSE(sent.contains("service_tier"));
  EXPECT_EQ(sent["max_tokens"], 8);
  // OpenAI's reasoning models take only the newer name: it is kept.
  json newer = b;
  newer.erase("max_tokens");
  newer["max_completion_tokens"] = 6;
  ASSERT_EQ(post(newer).status, 200);
  EXPECT_EQ(last_upstream_body()["max_completion_tokens"], 6);
  EXPECT_FALSE(last_upstream_body().contains("max_tokens"));

  b["model"] = "edge";
  b["tools"] = tools();
  b["tool_choice"] = "none";
  for (bool stream : {false, true}) {
    b["stream"] = stream;
    const auto edge = post(b);
    ASSERT_EQ(edge.status, 200) << edge.body;
    EXPECT_EQ(edge.header("x-foreshore-tier"), "edge");
    EXPECT_EQ(edge.header("x-foreshore-ignored-params"), "tools,logit_bias,reasoning_effort,store");
  }
}

// Images (and audio, files) only a cloud model can see: the parts reach it
// whole, and the edge, which would answer from the text alone, never serves.
TEST_F(GatewayTools, ImagePartsGoToTheCloudWhole) {
  const json parts = json::array(
      {{{"type", "text"}, {"text", "what is in this picture"}},
       {{"type", "image_url"},
        {"image_url", {{"url", "data:image/png;base64,iVBORw0KGgo="}, {"detail", "low"}}}}});
  json b = {{"model", "foreshore"},
            {"messages", {{{"role", "user"}, {"content", parts}}}},
            {"max_tokens", 8}};
  const auto r = post(b);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-foreshore-tier"), "cloud");
  EXPECT_EQ(last_upstream_body()["messages"][0]["content"], parts);

  const auto forced = post(b, {{"x-foreshore-tier", "edge"}});
  expect_error(forced, 400);
  EXPECT_NE(forced.body.find("image_url content"), std::string::npos) << forced.body;

  b["messages"][0]["content"] = json::array({{{"kind", "image"}}});
  const auto bad = post(b);
  expect_error(bad, 400);
  EXPECT_EQ(bad.json()["error"]["param"], "messages[0].content");
}

// A reasoning model's reasoning_content (and any other message field the
// gateway does not write itself) reaches the client, whole or streamed.
TEST_F(GatewayTools, OtherAnswerFieldsPassThrough) {
  upstream_.set_reasoning("the user wants a story");
  json b = {{"model", "cloud"},
            {"messages", {{{"role", "user"}, {"content", "Once upon a time"}}}},
            {"max_tokens", 8}};
  const auto whole = post(b);
  ASSERT_EQ(whole.status, 200) << whole.body;
  const json message = whole.json()["choices"][0]["message"];
  EXPECT_EQ(message["reasoning_content"], "the user wants a story") << whole.body;
  EXPECT_EQ(message["content"], "echo: Once upon a time");

  b["stream"] = true;
  const auto streamed = post(b);
  ASSERT_EQ(streamed.status, 200) << streamed.body;
  const Stream s = read_stream(streamed);
  std::string reasoning;
  for (const json& chunk : s.chunks) {
    for (const json& c : chunk["choices"]) {
      if (c.contains("delta") && c["delta"].contains("reasoning_content")) {
        EXPECT_FALSE(c["delta"].contains("content")) << chunk.dump();
        reasoning += c["delta"]["reasoning_content"].get<std::string>();
      }
    }
  }
  EXPECT_EQ(reasoning, "the user wants a story") << streamed.body;
  EXPECT_EQ(s.text, "echo: Once upon a time");
  EXPECT_TRUE(s.done);
}

TEST_F(GatewayTools, MalformedToolFieldsAreNamed) {
  const auto expect_param = [&](json body, const std::string& param) {
    const auto r = post(body);
    expect_error(r, 400);
    EXPECT_EQ(r.json()["error"]["param"], param) << r.body;
  };
  json b = tool_request(false);
  b.erase("tools");
  expect_param(b, "tool_choice");
  b = tool_request(false);
  b["tools"][0]["function"].erase("name");
  expect_param(b, "tools[0]");
  b = tool_request(false);
  b["tool_choice"] = "sometimes";
  expect_param(b, "tool_choice");
  b = tool_request(false);
  b["functions"] = json::array();
  expect_param(b, "functions");
  b = tool_request(false);
  b["response_format"] = {{"type", "yaml"}};
  expect_param(b, "response_format");
  b = tool_request(false);
  b["messages"].push_back({{"role", "tool"}, {"content", "42"}});
  expect_param(b, "messages[1].tool_call_id");
  b = tool_request(false);
  b["messages"].push_back({{"role", "assistant"}, {"tool_calls", {{{"id", "x"}}}}});
  expect_param(b, "messages[1].tool_calls[0]");
  EXPECT_TRUE(upstream_.received_bodies().empty());
}

}  // namespace
}  // namespace foreshore::testing
