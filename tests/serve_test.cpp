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
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "serve/http.h"
#include "support/emulator.h"
#include "support/process.h"
#include "support/test_paths.h"

namespace foreshore::serve {
namespace {

using namespace std::chrono_literals;
using foreshore::testing::http_get;
using foreshore::testing::http_post;
using foreshore::testing::sse_data;
using nlohmann::json;

json chat_body() {
  return {{"messages", {{{"role", "user"}, {"content", "hi"}}}}};
}

// A socket connected to the gateway on loopback, for requests no HTTP client
// would write; -1 when the connection fails.
int connect_loopback(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// ---------------------------------------------------------------- reply objects

TEST(HttpReplyTest, HeadersAreFoundInAnyCaseAndReplaced) {
  HttpRequest req;
  req.headers = {{"X-Foreshore-Tier", "edge"}, {"authorization", "Bearer k"}};
  EXPECT_EQ(req.header("x-foreshore-tier"), "edge");
  EXPECT_EQ(req.authorization(), "Bearer k");
  EXPECT_EQ(req.header("x-foreshore-session"), "");

  HttpReply reply;
  reply.set_header("x-foreshore-tier", "edge");
  reply.set_header("X-Foreshore-Tier", "cloud");
  ASSERT_EQ(reply.headers.size(), 1u);
  EXPECT_EQ(reply.headers[0].second, "cloud");
}

// A handler's streamed reply through write_reply() on a real HTTP server: the
// pieces arrive in order and close() runs once, whole when the client read to
// the end and not whole when it went away.
class StreamedReplyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_.Get("/stream", [this](const httplib::Request& req, httplib::Response& res) {
      HttpReply reply;
      reply.content_type = "text/event-stream";
      reply.set_header("x-pieces", req.get_param_value("n"));
      const int pieces = std::stoi(req.get_param_value("n"));
      reply.stream = std::make_shared<StreamedBody>();
      reply.stream->next = [sent = 0, pieces](std::string& piece) mutable {
        if (pieces < 0) {  // never ends: the client has to go away
          std::this_thread::sleep_for(5ms);
          piece = "data: tick\n\n";
          return true;
        }
        piece = "data: " + std::to_string(sent++) + "\n\n";
        return sent < pieces;
      };
      reply.stream->close = [this](bool whole) {
        std::lock_guard lock(mu_);
        closes_.push_back(whole);
        cv_.notify_all();
      };
      write_reply(std::move(reply), res);
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    ASSERT_GT(port_, 0);
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  void TearDown() override {
    // httplib ignores stop() until its accept loop runs.
    while (!server_.is_running()) std::this_thread::sleep_for(1ms);
    server_.stop();
    thread_.join();
  }
  std::vector<bool> closes_after(std::chrono::milliseconds wait) {
    std::unique_lock lock(mu_);
    cv_.wait_for(lock, wait, [&] { return !closes_.empty(); });
    return closes_;
  }

  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<bool> closes_;
};

TEST_F(StreamedReplyTest, PiecesInOrderThenOneWholeClose) {
  const auto r = http_get(port_, "/stream?n=3");
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.header("x-pieces"), "3");
  EXPECT_EQ(r.header("Content-Type"), "text/event-stream");
  EXPECT_EQ(sse_data(r.body), (std::vector<std::string>{"0", "1", "2"}));
  EXPECT_EQ(closes_after(5s), std::vector<bool>{true});
}

TEST_F(StreamedReplyTest, AClientThatGoesAwayClosesItNotWhole) {
  {
    httplib::Client client("127.0.0.1", port_);
    int chunks = 0;
    client.Get("/stream?n=-1", [&](const char*, size_t) { return ++chunks < 3; });
    EXPECT_EQ(chunks, 3);
  }
  EXPECT_EQ(closes_after(10s), std::vector<bool>{false});
}

// ---------------------------------------------------------------- server

// A tier whose words, pace and failures the test sets.
class FakeBackend : public backend::Backend {
 public:
  FakeBackend(std::string name, backend::Placement placement, std::string model) {
    info_.name = std::move(name);
    info_.kind = placement == backend::Placement::kCloud ? backend::TierKind::kOpenAi
                                                         : backend::TierKind::kEmbedded;
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
  // The scheme's name is case-insensitive (RFC 9110).
  EXPECT_EQ(chat(chat_body(), {{"Authorization", "bearer sk-good"}}).status, 200);
  EXPECT_EQ(http_get(port, "/v1/models").status, 401);
  EXPECT_EQ(http_get(port, "/v1/models", {{"Authorization", "Bearer sk-good"}}).status, 200);
  EXPECT_EQ(http_get(port, "/healthz").status, 200);
}

TEST_F(GatewayTest, MalformedAndOversizedBodies) {
  start("server:\n  max_body_bytes: 2048\n");
  auto r = http_post(port, "/v1/chat/completions", "{\"messages\": [");
  expect_error(r, 400, "invalid_request_error");
  EXPECT_EQ(r.json()["error"]["code"], "invalid_json");
  EXPECT_NE(r.json()["error"]["message"].get<std::string>().find(
                "at byte 15 (line 1, column 15): syntax error"),
            std::string::npos)
      << r.body;
  // Where and why, without echoing the body back.
  r = http_post(port, "/v1/chat/completions",
                "{\"messages\":[{\"role\":\"user\",\"content\":\"secret \xff\"}]}");
  expect_error(r, 400, "invalid_request_error");
  EXPECT_NE(r.body.find("ill-formed UTF-8 byte"), std::string::npos) << r.body;
  EXPECT_EQ(r.body.find("secret"), std::string::npos) << r.body;
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
  // A known path with another method: 405 and the method it takes.
  r = http_get(port, "/v1/chat/completions");
  expect_error(r, 405, "invalid_request_error");
  EXPECT_EQ(r.header("Allow"), "POST");
  EXPECT_EQ(r.json()["error"]["code"], "method_not_allowed");
  r = http_post(port, "/healthz", "{}");
  expect_error(r, 405, "invalid_request_error");
  EXPECT_EQ(r.header("Allow"), "GET");
}

// Pages from server.cors_origins may call the gateway from a browser; other
// pages get no CORS headers, so the browser keeps the answer from them.
TEST_F(GatewayTest, BrowsersFromListedOriginsOnly) {
  start("server:\n  cors_origins: [\"http://localhost:3000\"]\n");
  httplib::Client client("127.0.0.1", port);
  auto pre = client.Options("/v1/chat/completions",
                            {{"Origin", "http://localhost:3000"},
                             {"Access-Control-Request-Method", "POST"},
                             {"Access-Control-Request-Headers", "content-type, authorization"}});
  ASSERT_TRUE(pre);
  EXPECT_EQ(pre->status, 204);
  EXPECT_EQ(pre->get_header_value("Access-Control-Allow-Origin"), "http://localhost:3000");
  EXPECT_EQ(pre->get_header_value("Access-Control-Allow-Headers"), "content-type, authorization");
  auto r = chat(chat_body(), {{"Origin", "http://localhost:3000"}});
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("Access-Control-Allow-Origin"), "http://localhost:3000");
  EXPECT_NE(r.header("Access-Control-Expose-Headers").find("x-foreshore-tier"), std::string::npos);
  r = chat(chat_body(), {{"Origin", "http://evil.example"}});
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("Access-Control-Allow-Origin"), "");
  pre = client.Options("/v1/chat/completions", {{"Origin", "http://evil.example"}});
  ASSERT_TRUE(pre);
  EXPECT_EQ(pre->get_header_value("Access-Control-Allow-Origin"), "");
}

// A POST without Content-Length has no body (RFC 9112): it is answered at
// once, not after the read timeout (HTTP clients always send the length, so
// the request is written by hand).
TEST_F(GatewayTest, APostWithoutALengthHasNoBody) {
  start();
  const int fd = connect_loopback(port);
  ASSERT_GE(fd, 0);
  const std::string request =
      "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  ASSERT_EQ(::send(fd, request.data(), request.size(), 0), static_cast<ssize_t>(request.size()));
  // The server's read timeout is 5 s; an answer must come well before it.
  const auto limit = foreshore::testing::time_limit(std::chrono::seconds(2));
  timeval wait{static_cast<time_t>(limit.count() / 1000), 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait);
  std::string answer;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;)
    answer.append(buf, static_cast<size_t>(n));
  ::close(fd);
  EXPECT_TRUE(answer.starts_with("HTTP/1.1 400")) << answer;
  EXPECT_NE(answer.find("The request body is empty"), std::string::npos) << answer;
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
    const int fd = connect_loopback(port);
    ASSERT_GE(fd, 0);
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
