// The fault-injection suite (issue 4): real `foreshore serve` processes on
// loopback, whose cloud tier is the in-process FaultServer told to misbehave
// (5xx, 429, slow first byte, reset mid-stream, garbage SSE, black hole), and
// whose edge tier is the real stories260K model. Each scenario sends a mix of
// requests from several client threads (routed, cascade, consistency, forced
// edge, forced cloud, streaming or not, a quarter of them device-only) and
// checks, for every single request:
//   - it got an answer or an error (none lost, none hung: every client has a
//     timeout, so a hang shows as a failure, not a hung test);
//   - the answer or error is the one the policy promises for that fault and
//     that kind of request (routed requests are answered or degraded, forced
//     ones get exactly one attempt and a mapped status, device-only data is
//     served by the edge or refused with 403);
//   - streams end with [DONE] or with an SSE error event, never both or neither;
//   - the cloud process never received any device-only text.
// Then the gateway must still be alive and /metrics must render. One line per
// scenario, "RELIABILITY | scenario | sent | answered | degraded | errored |
// notes", gives the figures docs/RELIABILITY.md reports.
//
// The ReliabilityFeatures suite at the end covers the edge model missing or
// corrupt, simulated memory pressure, config reload (SIGHUP) and SIGTERM, each
// under load.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/types.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/fault_server.h"
#include "support/process.h"
#include "support/test_paths.h"

namespace foreshore::testing {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

// In every device-only prompt, and nowhere else: the cloud must never see it.
constexpr const char* kDeviceOnlyMarker = "QZ7X-DEVICE-ONLY-MARKER";
constexpr const char* kSsn = "078-05-1120";
// In every public prompt: the cloud does see these, which proves the check real.
constexpr const char* kPublicMarker = "PUBLIC-PROMPT";
// What the cloud answers: the edge model never writes it, so an answer served
// by the edge that contains it mixes the two tiers' output.
constexpr const char* kCloudWord = "CLOUDTEXT";
constexpr int kMaxTokens = 8;
constexpr int kRequestsPerScenario = 48;
constexpr int kClientThreads = 6;
// Hang guard only: far above anything a scenario needs.
constexpr auto kClientTimeout = 30s;

std::string edge_model_path() {
  return shared_models_dir() + "/stories260K.gguf";
}

std::string cloud_reply(int words) {
  std::string out = kCloudWord;
  for (int i = 1; i < words; ++i) out += " w" + std::to_string(i);
  return out;
}

// --- the request mix ---------------------------------------------------------

enum class Kind {
  kRouted,              // model "foreshore": the configured policy decides
  kCascade,             // "foreshore/cascade": edge first, escalate when unsure
  kConsistency,         // "foreshore/consistency": both tiers, compared
  kForcedEdge,          // x-foreshore-tier: edge
  kForcedCloud,         // x-foreshore-tier: cloud
  kDeviceOnlyPii,       // an SSN in the prompt, routed
  kDeviceOnlyDeclared,  // x-foreshore-data-class: device-only, cascade
  kDeviceOnlyToCloud,   // an SSN in the prompt, and the cloud forced: 403
};

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kRouted:
      return "routed";
    case Kind::kCascade:
      return "cascade";
    case Kind::kConsistency:
      return "consistency";
    case Kind::kForcedEdge:
      return "forced-edge";
    case Kind::kForcedCloud:
      return "forced-cloud";
    case Kind::kDeviceOnlyPii:
      return "device-only-pii";
    case Kind::kDeviceOnlyDeclared:
      return "device-only-declared";
    case Kind::kDeviceOnlyToCloud:
      return "device-only-forced-cloud";
  }
  return "?";
}

bool device_only(Kind k) {
  return k == Kind::kDeviceOnlyPii || k == Kind::kDeviceOnlyDeclared ||
         k == Kind::kDeviceOnlyToCloud;
}

struct Request {
  int index = 0;
  Kind kind = Kind::kRouted;
  bool stream = false;
  int max_tokens = kMaxTokens;
};

// Twelve slots per round, a quarter of them device-only; each slot alternates
// streaming from one round to the next.
std::vector<Request> request_mix(int n) {
  static const Kind kSlots[12] = {Kind::kRouted,
                                  Kind::kRouted,
                                  Kind::kCascade,
                                  Kind::kCascade,
                                  Kind::kConsistency,
                                  Kind::kForcedEdge,
                                  Kind::kForcedCloud,
                                  Kind::kForcedCloud,
                                  Kind::kDeviceOnlyPii,
                                  Kind::kDeviceOnlyDeclared,
                                  Kind::kDeviceOnlyToCloud,
                                  Kind::kRouted};
  std::vector<Request> out;
  for (int i = 0; i < n; ++i) {
    Request r;
    r.index = i;
    r.kind = kSlots[i % 12];
    r.stream = ((i / 12) + i) % 2 == 1;
    out.push_back(r);
  }
  return out;
}

// --- one request, sent and classified ----------------------------------------

struct Outcome {
  Request req;
  int status = 0;  // 0: no HTTP response at all
  httplib::Error error = httplib::Error::Success;
  std::string body;
  httplib::Headers headers;
  // Classified:
  std::string label;  // ok | degraded | sse_error | <HTTP status> | lost
  std::string tier;   // the tier that served (provenance of the answer)
  std::string model;  // the model that served
  std::string text;   // the answer's text
  bool degraded = false;
  bool has_confidence = false;
  bool done = false;                  // stream: a [DONE] event
  bool sse_error = false;             // stream: an error event
  std::vector<std::string> problems;  // shape errors found while classifying

  std::string header(const std::string& name) const {
    auto it = headers.find(name);
    return it == headers.end() ? std::string() : it->second;
  }
  std::string describe() const {
    std::string b = body.size() > 400 ? body.substr(0, 400) + "..." : body;
    return "#" + std::to_string(req.index) + " " + kind_name(req.kind) +
           (req.stream ? " stream" : " plain") + " -> " + label + " tier=" + tier +
           (status == 0 ? " (" + httplib::to_string(error) + ")" : "") + " text: '" +
           text.substr(0, 160) + "' body: " + b;
  }
};

std::string prompt_for(const Request& r) {
  const std::string i = std::to_string(r.index);
  switch (r.kind) {
    case Kind::kDeviceOnlyPii:
    case Kind::kDeviceOnlyToCloud:
      return std::string(kDeviceOnlyMarker) + "-" + i + " my SSN is " + kSsn +
             ", tell me a story about it";
    case Kind::kDeviceOnlyDeclared:
      return std::string(kDeviceOnlyMarker) + "-" + i + " a quiet story about a dog";
    default:
      return std::string(kPublicMarker) + "-" + i + " Once upon a time there was a little cat";
  }
}

json body_for(const Request& r) {
  std::string model = "foreshore";
  if (r.kind == Kind::kCascade || r.kind == Kind::kDeviceOnlyDeclared) {
    model = "foreshore/cascade";
  } else if (r.kind == Kind::kConsistency) {
    model = "foreshore/consistency";
  }
  json b = {{"model", model},
            {"messages", {{{"role", "user"}, {"content", prompt_for(r)}}}},
            {"max_tokens", r.max_tokens},
            {"stream", r.stream}};
  return b;
}

httplib::Headers headers_for(const Request& r) {
  httplib::Headers h;
  if (r.kind == Kind::kForcedEdge) h.emplace("x-foreshore-tier", "edge");
  if (r.kind == Kind::kForcedCloud || r.kind == Kind::kDeviceOnlyToCloud) {
    h.emplace("x-foreshore-tier", "cloud");
  }
  if (r.kind == Kind::kDeviceOnlyDeclared) h.emplace("x-foreshore-data-class", "device-only");
  return h;
}

void classify(Outcome& o) {
  if (o.status == 0) {
    o.label = "lost";
    return;
  }
  if (o.status != 200) {
    o.label = std::to_string(o.status);
    const json j = json::parse(o.body, nullptr, false);
    if (!j.is_object() || !j.contains("error") || !j["error"].is_object() ||
        !j["error"].contains("message") || !j["error"]["message"].is_string() ||
        j["error"]["message"].get<std::string>().empty()) {
      o.problems.push_back("error without an OpenAI error body with a message");
    }
    if (o.status == 429 && o.header("Retry-After").empty()) {
      o.problems.push_back("429 without Retry-After");
    }
    return;
  }
  if (!o.req.stream) {
    const json j = json::parse(o.body, nullptr, false);
    if (!j.is_object() || !j.contains("foreshore") || !j.contains("choices")) {
      o.problems.push_back("200 without a completion body");
      o.label = "malformed";
      return;
    }
    const json& p = j["foreshore"];
    o.tier = p.value("tier", "");
    o.model = p.value("model", "");
    o.degraded = p.value("degraded", false);
    o.has_confidence = p.contains("confidence");
    o.text = j["choices"][0]["message"].value("content", "");
    if (o.degraded != (o.header("x-foreshore-degraded") == "true")) {
      o.problems.push_back("body and header x-foreshore-degraded disagree");
    }
    if (o.tier != o.header("x-foreshore-tier")) {
      o.problems.push_back("body and header x-foreshore-tier disagree");
    }
    if (o.degraded && o.header("x-foreshore-confidence").empty()) {
      o.problems.push_back("degraded without x-foreshore-confidence");
    }
    o.label = o.degraded ? "degraded" : "ok";
    return;
  }
  // A stream: every event is JSON except the final [DONE]; it ends with
  // exactly one of [DONE] and an error event.
  const std::vector<std::string> events = sse_data(o.body);
  json last_provenance;
  for (size_t i = 0; i < events.size(); ++i) {
    const bool last = i + 1 == events.size();
    if (events[i] == "[DONE]") {
      o.done = true;
      if (!last) o.problems.push_back("[DONE] is not the last event");
      continue;
    }
    const json j = json::parse(events[i], nullptr, false);
    if (j.is_discarded()) {
      o.problems.push_back("an event is not JSON: " + events[i]);
      continue;
    }
    if (j.contains("error")) {
      o.sse_error = true;
      if (!last) o.problems.push_back("the error event is not the last event");
      if (!j["error"].is_object() || !j["error"].contains("message")) {
        o.problems.push_back("error event without a message");
      }
      continue;
    }
    if (j.contains("foreshore")) last_provenance = j["foreshore"];
    if (j.contains("choices") && !j["choices"].empty()) {
      const json& c = j["choices"][0];
      if (c.contains("delta") && c["delta"].contains("content")) {
        o.text += c["delta"]["content"].get<std::string>();
      }
    }
  }
  if (o.done == o.sse_error) {
    o.problems.push_back(o.done ? "stream has both [DONE] and an error event"
                                : "stream ends with neither [DONE] nor an error event");
  }
  if (last_provenance.is_object()) {
    o.tier = last_provenance.value("tier", "");
    o.model = last_provenance.value("model", "");
    o.degraded = last_provenance.value("degraded", false);
    o.has_confidence = last_provenance.contains("confidence");
  }
  o.label = o.sse_error ? "sse_error" : (o.degraded ? "degraded" : "ok");
}

// Sends one request; `on_first_byte` runs when the first body bytes arrive.
Outcome send(int port, const Request& r, const std::function<void()>& on_first_byte = {}) {
  Outcome o;
  o.req = r;
  httplib::Client client("127.0.0.1", port);
  client.set_connection_timeout(5s);
  client.set_read_timeout(kClientTimeout);
  client.set_write_timeout(kClientTimeout);
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/chat/completions";
  req.headers = headers_for(r);
  req.set_header("Content-Type", "application/json");
  req.body = body_for(r).dump();
  bool first = true;
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    if (first && on_first_byte) on_first_byte();
    first = false;
    o.body.append(data, n);
    return true;
  };
  httplib::Response res;
  httplib::Error error = httplib::Error::Success;
  if (client.send(req, res, error)) {
    o.status = res.status;
    o.headers = res.headers;
  }
  o.error = error;
  classify(o);
  return o;
}

std::vector<Outcome> run_mix(int port, const std::vector<Request>& requests,
                             int threads = kClientThreads) {
  std::vector<Outcome> out(requests.size());
  std::atomic<size_t> next{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < threads; ++t) {
    clients.emplace_back([&] {
      for (size_t i; (i = next.fetch_add(1)) < requests.size();) out[i] = send(port, requests[i]);
    });
  }
  for (auto& c : clients) c.join();
  return out;
}

// --- what a scenario checks and reports --------------------------------------

// The labels the policy allows for one request in one scenario.
using Expectation = std::function<std::set<std::string>(const Request&)>;

struct Figures {
  int sent = 0, answered = 0, degraded = 0, errored = 0, lost = 0;
  std::map<std::string, int> errors;  // label -> count, for the notes
};

Figures tally(const std::vector<Outcome>& outcomes) {
  Figures f;
  for (const auto& o : outcomes) {
    ++f.sent;
    if (o.label == "ok") {
      ++f.answered;
    } else if (o.label == "degraded") {
      ++f.degraded;
    } else if (o.label == "lost") {
      ++f.lost;
    } else {
      ++f.errored;
      ++f.errors[o.label];
    }
  }
  return f;
}

std::string error_notes(const Figures& f) {
  std::string notes;
  for (const auto& [label, n] : f.errors) {
    notes += (notes.empty() ? "" : " ") + label + "x" + std::to_string(n);
  }
  if (f.lost > 0) {
    notes += (notes.empty() ? "" : " ") + std::string("LOST x") + std::to_string(f.lost);
  }
  return notes.empty() ? "no errors" : "errors: " + notes;
}

void report(const std::string& scenario, const Figures& f, const std::string& notes) {
  std::printf("RELIABILITY | %-30s | %3d | %3d | %3d | %3d | %s\n", scenario.c_str(), f.sent,
              f.answered, f.degraded, f.errored, notes.c_str());
  std::fflush(stdout);
}

// Checks every outcome against the policy and the shape rules.
void check_outcomes(const std::vector<Outcome>& outcomes, const Expectation& expected) {
  for (const auto& o : outcomes) {
    SCOPED_TRACE(o.describe());
    EXPECT_NE(o.label, "lost") << "no response: lost or hung";
    for (const auto& p : o.problems) ADD_FAILURE() << p;
    const std::set<std::string> allowed = expected(o.req);
    EXPECT_TRUE(allowed.contains(o.label)) << "not what the policy promises for this request";
    const bool served = o.label == "ok" || o.label == "degraded";
    if (served && (device_only(o.req.kind) || o.req.kind == Kind::kForcedEdge)) {
      EXPECT_EQ(o.tier, "edge");
    }
    if (o.label == "degraded") {
      EXPECT_EQ(o.tier, "edge") << "a degraded answer is the edge's";
      EXPECT_TRUE(o.has_confidence) << "a degraded answer carries its confidence";
    }
    if (served && o.tier == "edge") {
      EXPECT_EQ(o.text.find(kCloudWord), std::string::npos)
          << "an answer served by the edge contains text the cloud streamed";
    }
    if (o.req.kind == Kind::kDeviceOnlyToCloud && o.label == "403") {
      EXPECT_NE(o.body.find("data_class_forbids_tier"), std::string::npos);
    }
  }
}

bool cloud_saw(const FaultServer& cloud, const std::string& needle) {
  for (const auto& r : cloud.received()) {
    if (r.body.find(needle) != std::string::npos || r.path.find(needle) != std::string::npos) {
      return true;
    }
  }
  return false;
}

// Everything the cloud got is free of device-only data.
void check_cloud_never_saw_device_only(const FaultServer& cloud) {
  EXPECT_FALSE(cloud_saw(cloud, kDeviceOnlyMarker)) << "the cloud received device-only text";
  EXPECT_FALSE(cloud_saw(cloud, kSsn)) << "the cloud received the SSN";
}

std::optional<double> metric_value(const std::string& metrics, const std::string& series) {
  std::istringstream in(metrics);
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with(series + " ")) return std::stod(line.substr(series.size() + 1));
  }
  return std::nullopt;
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

// --- the gateway under test --------------------------------------------------

struct GatewaySpec {
  std::string policy = "cloud";  // routing.policy: where routed public requests go
  std::string server_yaml;       // extra lines under server:, indented two spaces
  std::string edge_yaml;         // extra lines under tiers.edge, indented four spaces
  std::string edge_model = edge_model_path();
  std::string cloud_timeouts = "{connect_ms: 1000, first_byte_ms: 1000, total_ms: 5000}";
};

std::string gateway_yaml(const FaultServer& cloud, const GatewaySpec& s) {
  return "server:\n"
         "  request_timeout_ms: 20000\n" +
         s.server_yaml +
         "tiers:\n"
         "  edge:\n"
         "    kind: embedded\n"
         "    placement: device\n"
         "    model: " +
         s.edge_model +
         "\n"
         "    threads: 1\n"
         "    kv_memory_mb: 32\n" +
         s.edge_yaml +
         "  cloud:\n"
         "    kind: openai\n"
         "    placement: cloud\n"
         "    model: fault-model\n"
         "    endpoint: " +
         cloud.base_url() +
         "\n"
         "    timeouts: " +
         s.cloud_timeouts +
         "\n"
         "routing:\n"
         "  policy: " +
         s.policy +
         "\n"
         // Every cascade escalates: the edge's answers never look sure enough.
         "  cascade: {min_mean_logprob: -0.01}\n";
}

class Reliability : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::ifstream(edge_model_path()).good()) {
      GTEST_SKIP() << "stories260K.gguf not found in " << shared_models_dir();
    }
    cloud_.set_reply(cloud_reply(12));
  }

  void TearDown() override {
    gateway_.reset();
    for (const auto& f : temp_files_) std::remove(f.c_str());
  }

  std::string temp_file(const std::string& suffix) {
    temp_files_.push_back(temp_path(suffix));
    return temp_files_.back();
  }

  void start(const GatewaySpec& spec, const std::vector<std::string>& extra_env = {}) {
    config_ = temp_file(".yaml");
    write_file(config_, gateway_yaml(cloud_, spec));
    std::vector<std::string> env = {"FORESHORE_MODEL_PATH=" + shared_models_dir()};
    env.insert(env.end(), extra_env.begin(), extra_env.end());
    gateway_ = std::make_unique<ServeProcess>(std::vector<std::string>{"--config", config_}, env);
    ASSERT_TRUE(gateway_->ok()) << gateway_->process().stderr_text();
  }

  int port() const { return gateway_->port(); }
  bool alive() { return !gateway_->process().wait(0ms).has_value(); }
  std::string metrics() { return http_get(port(), "/metrics").body; }

  // The gateway survived and still reports.
  void check_gateway_healthy() {
    EXPECT_TRUE(alive()) << gateway_->process().stderr_text();
    const HttpResult m = http_get(port(), "/metrics");
    EXPECT_EQ(m.status, 200);
    EXPECT_NE(m.body.find("foreshore_requests_total"), std::string::npos);
    EXPECT_EQ(http_get(port(), "/healthz").status, 200);
  }

  // One fault scenario end to end.
  // `cloud_fails`: the cloud never answers usefully, so no answer may claim it.
  //
  // `probes`: indices of the mix sent first, one at a time, while the cloud's
  // circuit breaker is still closed (it opens after 5 consecutive failures and
  // then sends routed requests to the edge for 5 s), so that the paths a
  // failure takes under a live request are exercised deterministically: there
  // a routed request cannot be answered plainly and a forced one gets the
  // fault's own status, not the open breaker's 503.
  void run_scenario(const std::string& name, const Expectation& expected, bool cloud_fails,
                    const std::vector<int>& probes = {}) {
    std::vector<Request> mix = request_mix(kRequestsPerScenario);
    std::vector<Outcome> outcomes;
    for (const int i : probes) {
      const auto it =
          std::find_if(mix.begin(), mix.end(), [i](const Request& r) { return r.index == i; });
      outcomes.push_back(send(port(), *it));
      mix.erase(it);
    }
    check_outcomes(outcomes, [&](const Request& r) {
      std::set<std::string> s = expected(r);
      if (cloud_fails && r.kind == Kind::kForcedCloud) s.erase("503");
      if (cloud_fails && r.kind != Kind::kForcedCloud && !device_only(r.kind) &&
          r.kind != Kind::kForcedEdge) {
        s.erase("ok");
      }
      return s;
    });
    const std::vector<Outcome> rest = run_mix(port(), mix);
    check_outcomes(rest, expected);
    outcomes.insert(outcomes.end(), rest.begin(), rest.end());
    if (std::getenv("RELIABILITY_VERBOSE") != nullptr) {
      for (const auto& o : outcomes) std::printf("  %s\n", o.describe().c_str());
    }
    for (const auto& o : outcomes) {
      if (cloud_fails && (o.label == "ok" || o.label == "degraded")) {
        EXPECT_EQ(o.tier, "edge") << o.describe();
      }
    }
    check_cloud_never_saw_device_only(cloud_);
    EXPECT_TRUE(cloud_saw(cloud_, kPublicMarker))
        << "the cloud received no public request: the scenario tested nothing";
    check_gateway_healthy();
    const Figures f = tally(outcomes);
    // The gateway counts degraded answers as the clients saw them.
    EXPECT_EQ(metric_value(metrics(), "foreshore_degraded_total").value_or(0), f.degraded);
    report(name, f,
           error_notes(f) + "; cloud received " + std::to_string(cloud_.received().size()) +
               " requests, none with device-only data");
    if (HasFailure()) {
      std::string log = gateway_->process().stderr_text();
      if (log.size() > 6000) log = "..." + log.substr(log.size() - 6000);
      std::printf("gateway stderr (tail):\n%s\n", log.c_str());
    }
  }

  FaultServer cloud_;
  std::string config_;
  std::vector<std::string> temp_files_;
  std::unique_ptr<ServeProcess> gateway_;
};

// What every scenario shares: device-only data is served by the edge, and
// forcing it to the cloud is refused; a forced edge answers.
std::optional<std::set<std::string>> common_expectation(const Request& r) {
  if (r.kind == Kind::kDeviceOnlyToCloud) return std::set<std::string>{"403"};
  if (device_only(r.kind) || r.kind == Kind::kForcedEdge) return std::set<std::string>{"ok"};
  return std::nullopt;
}

// A failing cloud: routed requests are answered by the edge (plainly once the
// breaker has opened, degraded when the cloud failed under them); a forced
// cloud gets its one attempt and the mapped error (`forced_cloud`), or 503
// while the breaker is open.
Expectation failing_cloud(std::set<std::string> forced_cloud, bool partial_streams) {
  return [forced_cloud, partial_streams](const Request& r) -> std::set<std::string> {
    if (auto c = common_expectation(r)) return *c;
    if (r.kind == Kind::kForcedCloud) {
      std::set<std::string> s = forced_cloud;
      // Bytes already streamed cannot be taken back: the error comes as an event.
      if (partial_streams && r.stream) s.insert("sse_error");
      return s;
    }
    std::set<std::string> s = {"ok", "degraded"};
    // Routed streams that the cloud serves and breaks after its first byte:
    // no retry, no fallback, an error event (consistency does not stream the
    // cloud's answer, so it never breaks mid-way).
    if (partial_streams && r.stream && r.kind != Kind::kConsistency) s.insert("sse_error");
    return s;
  };
}

TEST_F(Reliability, HealthyCloudBaseline) {
  ASSERT_NO_FATAL_FAILURE(start({}));
  run_scenario(
      "healthy cloud (baseline)",
      [](const Request& r) -> std::set<std::string> {
        if (auto c = common_expectation(r)) return *c;
        return {"ok"};
      },
      false);
}

TEST_F(Reliability, Cloud500) {
  cloud_.set_mode(FaultMode::kStatus500);
  ASSERT_NO_FATAL_FAILURE(start({}));
  run_scenario("cloud 500", failing_cloud({"502", "503"}, false), true, {0, 7});
}

// While the cloud's breaker is open: an edge request the edge cannot serve
// is the client's to fix when the edge was forced (400, whatever the cloud's
// state), and a routed one that only the cloud could serve is told when the
// breaker will probe (503 with Retry-After).
TEST_F(Reliability, WhileTheBreakerIsOpenRefusalsSayWhatHelps) {
  cloud_.set_mode(FaultMode::kStatus500);
  ASSERT_NO_FATAL_FAILURE(start({}));
  const std::string hello =
      R"({"max_tokens": 4, "messages": [{"role": "user", "content": "hello"}]})";
  for (int i = 0; i < 6; ++i) {
    const HttpResult r =
        http_post(port(), "/v1/chat/completions", hello, {{"x-foreshore-tier", "cloud"}});
    EXPECT_EQ(r.status, i < 5 ? 502 : 503) << r.body;
  }
  ASSERT_NE(metrics().find("foreshore_breaker_state{tier=\"cloud\"} 1"), std::string::npos)
      << metrics();
  const std::string two = R"({"n": 2, "max_tokens": 4,
      "messages": [{"role": "user", "content": "hello"}]})";
  const HttpResult forced =
      http_post(port(), "/v1/chat/completions", two, {{"x-foreshore-tier", "edge"}});
  EXPECT_EQ(forced.status, 400) << forced.body;
  EXPECT_EQ(forced.json()["error"]["code"], "unsupported_on_edge") << forced.body;
  const HttpResult routed = http_post(port(), "/v1/chat/completions", two);
  EXPECT_EQ(routed.status, 503) << routed.body;
  EXPECT_FALSE(routed.header("Retry-After").empty()) << routed.body;
}

TEST_F(Reliability, Cloud429) {
  cloud_.set_mode(FaultMode::kStatus429);
  cloud_.set_retry_after("1");
  ASSERT_NO_FATAL_FAILURE(start({}));
  // A 429 does not open the breaker (the tier is up, only busy), so every
  // forced request gets the 429 itself, with its Retry-After.
  run_scenario("cloud 429 (Retry-After: 1)", failing_cloud({"429"}, false), true, {0, 7});
}

TEST_F(Reliability, CloudSlowFirstByteWithinTimeout) {
  cloud_.set_mode(FaultMode::kDelayFirstByte);
  cloud_.set_first_byte_delay(300ms);  // first_byte_ms is 1000
  ASSERT_NO_FATAL_FAILURE(start({}));
  run_scenario(
      "cloud slow first byte < timeout",
      [](const Request& r) -> std::set<std::string> {
        if (auto c = common_expectation(r)) return *c;
        return {"ok"};
      },
      false);
}

TEST_F(Reliability, CloudSlowFirstBytePastTimeout) {
  cloud_.set_mode(FaultMode::kDelayFirstByte);
  cloud_.set_first_byte_delay(2500ms);  // first_byte_ms is 1000
  ASSERT_NO_FATAL_FAILURE(start({}));
  run_scenario("cloud slow first byte > timeout", failing_cloud({"504", "503"}, false), true,
               {0, 7});
}

TEST_F(Reliability, CloudResetMidStream) {
  cloud_.set_mode(FaultMode::kDieMidStream);
  cloud_.set_die_after_chunks(3);
  ASSERT_NO_FATAL_FAILURE(start({}));
  run_scenario("cloud reset mid-stream", failing_cloud({"502", "503"}, true), true, {3, 1, 7});
}

TEST_F(Reliability, CloudGarbageSse) {
  cloud_.set_mode(FaultMode::kGarbageSse);
  ASSERT_NO_FATAL_FAILURE(start({}));
  run_scenario("cloud garbage SSE", failing_cloud({"502", "503"}, true), true, {3, 1, 7});
}

TEST_F(Reliability, CloudBlackHole) {
  cloud_.set_mode(FaultMode::kBlackHole);
  ASSERT_NO_FATAL_FAILURE(start({}));
  run_scenario("cloud black hole", failing_cloud({"504", "503"}, false), true, {0, 7});
  cloud_.set_mode(FaultMode::kNormal);  // releases the requests it holds
}

// --- scenarios that need the gateway's newer features ------------------------

class ReliabilityFeatures : public Reliability {
 protected:
  // A gateway whose cloud streams `words` words, one every 150 ms, under the
  // given server: settings.
  void start_slow_cloud(int words, const std::string& server_yaml) {
    cloud_.set_reply(cloud_reply(words));
    cloud_.set_chunk_delay(std::chrono::milliseconds(150));
    GatewaySpec spec;
    spec.server_yaml = server_yaml;
    spec.cloud_timeouts = "{connect_ms: 1000, first_byte_ms: 5000, total_ms: 20000}";
    ASSERT_NO_FATAL_FAILURE(start(spec));
  }

  // Streams out.size() requests of `words` tokens at once, request i of
  // kind_of(i); `streaming` counts those whose first chunk arrived.
  std::vector<std::thread> stream_clients(int words, const std::function<Kind(int)>& kind_of,
                                          std::vector<Outcome>& out, std::atomic<int>& streaming) {
    std::vector<std::thread> clients;
    for (int i = 0; i < static_cast<int>(out.size()); ++i) {
      clients.emplace_back([&, i, words, kind = kind_of(i)] {
        Request r;
        r.index = i;
        r.kind = kind;
        r.stream = true;
        r.max_tokens = words;
        out[static_cast<size_t>(i)] = send(port(), r, [&] { streaming.fetch_add(1); });
      });
    }
    for (int i = 0; i < 600 && streaming.load() < static_cast<int>(out.size()); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return clients;
  }
};

// The edge tier cannot load its model. The gateway may refuse to start (exit
// 1 or 2, the message naming the file), or start without its edge (saying so,
// naming the file) and answer device-only requests with a 503 that says why.
// Either way the cloud never gets device-only data.
void check_edge_model_unusable(FaultServer& cloud, const std::string& scenario,
                               const std::string& model_file, const std::string& config) {
  auto p = Process::start({foreshore_binary(), "serve", "--config", config, "--port", "0"},
                          {"FORESHORE_MODEL_PATH=" + shared_models_dir()});
  ASSERT_TRUE(p);
  const size_t cloud_before = cloud.received().size();
  const auto line = p->wait_for_line("listening on http://", 60s);
  if (!line) {
    const auto rc = p->wait(30s);
    ASSERT_TRUE(rc.has_value()) << "neither started nor exited";
    EXPECT_TRUE(*rc == 1 || *rc == 2) << "exit status " << *rc << "\n" << p->stderr_text();
    EXPECT_NE(p->stderr_text().find(model_file), std::string::npos)
        << "the error does not name the model file:\n"
        << p->stderr_text();
    EXPECT_EQ(cloud.received().size(), cloud_before);
    report(scenario, Figures{},
           "gateway refused to start (exit " + std::to_string(*rc) +
               "), the message names the file; cloud received nothing");
    return;
  }
  // Started without a usable edge: it must say so, naming the file.
  EXPECT_NE(p->stderr_text().find(model_file), std::string::npos)
      << "the warning does not name the model file:\n"
      << p->stderr_text();
  const int port = std::atoi(line->c_str() + line->rfind(':') + 1);
  const std::vector<Outcome> outcomes = run_mix(port, request_mix(kRequestsPerScenario));
  check_outcomes(outcomes, [](const Request& r) -> std::set<std::string> {
    if (r.kind == Kind::kDeviceOnlyToCloud) return {"403"};
    if (device_only(r.kind) || r.kind == Kind::kForcedEdge) return {"503"};
    return {"ok"};  // the cloud is healthy and allowed
  });
  for (const auto& o : outcomes) {
    if (device_only(o.req.kind) && o.label == "503") {
      EXPECT_NE(o.body.find("edge"), std::string::npos) << "the 503 does not say why: " << o.body;
    }
  }
  check_cloud_never_saw_device_only(cloud);
  EXPECT_FALSE(p->wait(0ms).has_value()) << p->stderr_text();
  EXPECT_EQ(http_get(port, "/metrics").status, 200);
  const Figures f = tally(outcomes);
  report(scenario, f,
         "gateway started without its edge (stderr names the file); " + error_notes(f) +
             "; device-only got 503 saying why, cloud received none of it");
}

TEST_F(ReliabilityFeatures, EdgeModelMissing) {
  GatewaySpec spec;
  spec.edge_model = (std::filesystem::temp_directory_path() /
                     ("foreshore-missing-" + std::to_string(::getpid()) + ".gguf"))
                        .string();
  const std::string config = temp_file(".yaml");
  write_file(config, gateway_yaml(cloud_, spec));
  check_edge_model_unusable(cloud_, "edge model missing", spec.edge_model, config);
}

TEST_F(ReliabilityFeatures, EdgeModelCorrupt) {
  std::ifstream in(edge_model_path(), std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GT(bytes.size(), 4096u);
  // Cut in the metadata, and cut in the tensor data.
  for (const size_t keep : {size_t{200}, bytes.size() / 2}) {
    SCOPED_TRACE("truncated to " + std::to_string(keep) + " bytes");
    GatewaySpec spec;
    spec.edge_model = temp_file("-truncated.gguf");
    write_file(spec.edge_model, bytes.substr(0, keep));
    const std::string config = temp_file(".yaml");
    write_file(config, gateway_yaml(cloud_, spec));
    check_edge_model_unusable(cloud_, "edge model truncated (" + std::to_string(keep) + " B)",
                              spec.edge_model, config);
  }
}

// Memory pressure simulated through the file the gateway samples: under high
// pressure routed public requests go to the cloud while device-only ones stay
// on the edge, served by its low-memory model; back at 0, routing is normal.
TEST_F(ReliabilityFeatures, MemoryPressure) {
  const std::string level_file = temp_file(".level");
  write_file(level_file, "0");
  const std::string low_memory_model = temp_file("-lowmem.gguf");
  std::filesystem::copy_file(edge_model_path(), low_memory_model,
                             std::filesystem::copy_options::overwrite_existing);
  const std::string low_memory_name = std::filesystem::path(low_memory_model).stem().string();
  GatewaySpec spec;
  spec.policy = "edge";
  spec.server_yaml = "  memory_pressure_interval_ms: 100\n";
  spec.edge_yaml = "    low_memory_model: " + low_memory_model + "\n";
  ASSERT_NO_FATAL_FAILURE(start(spec, {"FORESHORE_SIMULATE_MEMORY_PRESSURE_FILE=" + level_file}));

  auto wait_for_level = [&](int level) {
    for (int i = 0; i < 300; ++i) {
      if (metric_value(metrics(), "foreshore_memory_pressure_level") == level) return true;
      if (!alive()) return false;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  };

  std::vector<Outcome> all;
  std::string notes;
  for (const int level : {0, 2, 0}) {
    SCOPED_TRACE("memory pressure level " + std::to_string(level));
    write_file(level_file, std::to_string(level));
    ASSERT_TRUE(wait_for_level(level))
        << "foreshore_memory_pressure_level never read " << level << "\n"
        << metrics() << gateway_->process().stderr_text();
    const std::vector<Outcome> outcomes = run_mix(port(), request_mix(24));
    int to_cloud = 0, routed_n = 0;
    check_outcomes(outcomes, [](const Request& r) -> std::set<std::string> {
      if (auto c = common_expectation(r)) return *c;
      return {"ok"};  // the cloud is healthy
    });
    for (const auto& o : outcomes) {
      if (o.label != "ok") continue;
      SCOPED_TRACE(o.describe());
      if (o.req.kind == Kind::kRouted || o.req.kind == Kind::kCascade ||
          o.req.kind == Kind::kConsistency) {
        ++routed_n;
        to_cloud += o.tier == "cloud";
        // High pressure: whatever may leave the device does, whatever the policy.
        if (level >= 2) {
          EXPECT_EQ(o.tier, "cloud");
        }
      }
      // Policy edge keeps plain routed requests local while memory is fine.
      if (o.req.kind == Kind::kRouted && level < 2) {
        EXPECT_EQ(o.tier, "edge");
      }
      if (o.tier == "edge") {
        EXPECT_EQ(o.model, level >= 2 ? low_memory_name : "stories260K");
        if (!o.req.stream) {
          EXPECT_EQ(o.header("x-foreshore-model"), o.model);
        }
      }
    }
    notes += (notes.empty() ? "" : ", ") + std::string("level ") + std::to_string(level) + ": " +
             std::to_string(to_cloud) + "/" + std::to_string(routed_n) + " routed to cloud";
    all.insert(all.end(), outcomes.begin(), outcomes.end());
  }
  check_cloud_never_saw_device_only(cloud_);
  check_gateway_healthy();
  const Figures f = tally(all);
  report("memory pressure 0 -> 2 -> 0", f,
         error_notes(f) + "; " + notes +
             "; device-only always on the edge, at level 2 on its low_memory_model");
}

// A background load of mixed requests until `stop`; every outcome is kept.
class Load {
 public:
  Load(int port, int threads) {
    for (int t = 0; t < threads; ++t) {
      clients_.emplace_back([this, port, t, threads] {
        for (int i = t; !stop_.load(); i += threads) {
          Request r = request_mix(12)[static_cast<size_t>(i % 12)];
          r.index = i;
          Outcome o = send(port, r);
          {
            std::lock_guard lock(mu_);
            outcomes_.push_back(std::move(o));
          }
          std::this_thread::sleep_for(50ms);  // a steady load, not a flood
        }
      });
    }
  }
  ~Load() { stop(); }
  size_t completed() {
    std::lock_guard lock(mu_);
    return outcomes_.size();
  }
  // Waits until `more` further requests have completed (false on timeout).
  bool wait_for(size_t more) {
    const size_t target = completed() + more;
    for (int i = 0; i < 600 && completed() < target; ++i) std::this_thread::sleep_for(50ms);
    return completed() >= target;
  }
  std::vector<Outcome> stop() {
    stop_.store(true);
    for (auto& c : clients_) {
      if (c.joinable()) c.join();
    }
    std::lock_guard lock(mu_);
    return outcomes_;
  }

 private:
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<Outcome> outcomes_;
  std::vector<std::thread> clients_;
};

// SIGHUP re-reads the config while requests flow: a valid change takes
// effect, an invalid file is refused and the old config stays in force.
TEST_F(ReliabilityFeatures, ConfigReloadUnderLoad) {
  GatewaySpec spec;
  spec.policy = "edge";
  ASSERT_NO_FATAL_FAILURE(start(spec));
  auto reloads = [&](const char* outcome) {
    return metric_value(metrics(),
                        std::string("foreshore_config_reloads_total{outcome=\"") + outcome + "\"}")
        .value_or(0);
  };
  // Polls /metrics (hang guard: `polls` x 50 ms).
  auto wait_for_reloads = [&](const char* outcome, double n, int polls = 300) {
    for (int i = 0; i < polls; ++i) {
      if (!alive()) return false;
      if (reloads(outcome) >= n) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  };
  auto routed_tier = [&] {
    Request r;
    r.index = 9999;
    const Outcome o = send(port(), r);
    EXPECT_EQ(o.label, "ok") << o.describe();
    return o.header("x-foreshore-policy") + "/" + o.tier;
  };
  EXPECT_EQ(routed_tier(), "edge/edge");

  Load load(port(), 4);
  ASSERT_TRUE(load.wait_for(12));
  // A valid change: routed requests now go to the cloud.
  spec.policy = "cloud";
  write_file(config_, gateway_yaml(cloud_, spec));
  ASSERT_EQ(::kill(gateway_->process().pid(), SIGHUP), 0);
  EXPECT_TRUE(wait_for_reloads("ok", 1)) << gateway_->process().stderr_text();
  EXPECT_TRUE(load.wait_for(12));
  EXPECT_EQ(routed_tier(), "cloud/cloud");

  // Invalid files (not YAML; an unknown key): refused, said so with the
  // reason, and the previous config stays in force.
  const std::string invalid[] = {"tiers:\n  edge: {kind: embedded, model: [unclosed\n",
                                 gateway_yaml(cloud_, spec) + "bogus_section: 1\n"};
  size_t seen = 0;
  for (size_t i = 0; i < std::size(invalid); ++i) {
    SCOPED_TRACE("invalid config #" + std::to_string(i));
    write_file(config_, invalid[i]);
    ASSERT_EQ(::kill(gateway_->process().pid(), SIGHUP), 0);
    std::optional<std::string> line;
    for (int t = 0; t < 300 && !line && alive(); ++t) {
      const std::string log = gateway_->process().stderr_text();
      const size_t at = log.find("config reload failed", seen);
      if (at != std::string::npos && log.find('\n', at) != std::string::npos) {
        line = log.substr(at, log.find('\n', at) - at);
        seen = at + 1;
      } else {
        std::this_thread::sleep_for(50ms);
      }
    }
    ASSERT_TRUE(line.has_value()) << gateway_->process().stderr_text();
    EXPECT_NE(line->find(config_), std::string::npos) << "the reason names no file: " << *line;
    // Counted by the time it is logged (a short grace, not a timing check).
    EXPECT_TRUE(wait_for_reloads("failed", static_cast<double>(i + 1), 40))
        << "foreshore_config_reloads_total{outcome=\"failed\"} does not count it\n"
        << metrics();
    EXPECT_TRUE(load.wait_for(12));
    EXPECT_EQ(routed_tier(), "cloud/cloud") << "the previous config is no longer in force";
  }

  const std::vector<Outcome> outcomes = load.stop();
  check_outcomes(outcomes, [](const Request& r) -> std::set<std::string> {
    if (auto c = common_expectation(r)) return *c;
    return {"ok"};
  });
  check_cloud_never_saw_device_only(cloud_);
  check_gateway_healthy();
  const Figures f = tally(outcomes);
  report("config reload (SIGHUP) under load", f,
         error_notes(f) + "; reloads ok=" + std::to_string(static_cast<int>(reloads("ok"))) +
             " failed=" + std::to_string(static_cast<int>(reloads("failed"))) +
             ", invalid file refused, old config kept");
}

// SIGTERM with streams in flight: they finish, whole; what arrives after the
// signal is refused (503 shutting_down, or the connection); exit status 0.
TEST_F(ReliabilityFeatures, SigtermUnderLoad) {
  constexpr int kWords = 16;  // each stream takes a few seconds
  ASSERT_NO_FATAL_FAILURE(start_slow_cloud(kWords, "  shutdown_timeout_ms: 20000\n"));
  constexpr int kInFlight = 6;
  std::atomic<int> streaming{0};
  std::vector<Outcome> in_flight(kInFlight);
  auto clients = stream_clients(
      kWords, [](int i) { return i % 3 == 2 ? Kind::kForcedCloud : Kind::kRouted; }, in_flight,
      streaming);
  EXPECT_EQ(streaming.load(), kInFlight) << "the streams did not start";

  ASSERT_EQ(::kill(gateway_->process().pid(), SIGTERM), 0);
  // Once the gateway says it is stopping, new requests are refused.
  bool stopping = false;
  for (int i = 0; i < 600 && !stopping; ++i) {
    stopping = gateway_->process().stderr_text().find("SIGTERM") != std::string::npos;
    if (!stopping) std::this_thread::sleep_for(10ms);
  }
  EXPECT_TRUE(stopping) << gateway_->process().stderr_text();
  std::vector<Outcome> after;
  for (int i = 0; i < 6; ++i) {
    Request r;
    r.index = 100 + i;
    r.kind = i % 2 == 0 ? Kind::kRouted : Kind::kForcedEdge;
    r.stream = i % 3 == 0;
    after.push_back(send(port(), r));
  }
  for (auto& c : clients) c.join();
  const auto rc = gateway_->process().wait(30s);
  EXPECT_EQ(rc, std::optional<int>(0)) << gateway_->process().stderr_text();

  Figures f;
  for (const auto& o : in_flight) {
    SCOPED_TRACE(o.describe());
    for (const auto& p : o.problems) ADD_FAILURE() << p;
    EXPECT_EQ(o.label, "ok") << "a request in flight at SIGTERM did not complete";
    EXPECT_TRUE(o.done);
    EXPECT_EQ(o.text, cloud_reply(kWords)) << "the stream was cut short";
    ++f.sent;
    ++(o.label == "ok" ? f.answered : f.errored);
  }
  int refused = 0, shutting_down = 0;
  for (const auto& o : after) {
    SCOPED_TRACE(o.describe());
    ++f.sent;
    if (o.status == 503) {
      EXPECT_NE(o.body.find("shutting_down"), std::string::npos);
      ++shutting_down;
      ++f.errored;
    } else if (o.status == 0) {
      // Refused or reset: fails fast, it does not hang.
      EXPECT_TRUE(o.error == httplib::Error::Connection || o.error == httplib::Error::Read ||
                  o.error == httplib::Error::Write)
          << httplib::to_string(o.error);
      ++refused;
      ++f.errored;
    } else {
      ADD_FAILURE() << "a request after SIGTERM was neither refused nor answered 503";
    }
  }
  report("SIGTERM with 6 streams in flight", f,
         std::to_string(kInFlight) +
             " in-flight streams completed with [DONE]; after the signal: " +
             std::to_string(shutting_down) + " x 503 shutting_down, " + std::to_string(refused) +
             " connections refused (by design); exit status " +
             (rc ? std::to_string(*rc) : std::string("none")));
}

// SIGTERM with a shutdown limit shorter than the streams: each running
// stream ends with an SSE error event that says why (not a silent cut), and
// the log records it as failed, not 200.
TEST_F(ReliabilityFeatures, SigtermPastTheLimitEndsStreamsWithAnError) {
  constexpr int kWords = 40;  // each stream takes about 6 s
  ASSERT_NO_FATAL_FAILURE(start_slow_cloud(kWords, "  shutdown_timeout_ms: 300\n"));
  constexpr int kInFlight = 3;
  std::atomic<int> streaming{0};
  std::vector<Outcome> in_flight(kInFlight);
  auto clients = stream_clients(
      kWords, [](int) { return Kind::kForcedCloud; }, in_flight, streaming);
  ASSERT_EQ(streaming.load(), kInFlight) << "the streams did not start";
  ASSERT_EQ(::kill(gateway_->process().pid(), SIGTERM), 0);
  for (auto& c : clients) c.join();
  const auto rc = gateway_->process().wait(30s);
  EXPECT_EQ(rc, std::optional<int>(0)) << gateway_->process().stderr_text();
  for (const auto& o : in_flight) {
    SCOPED_TRACE(o.describe());
    EXPECT_TRUE(o.sse_error) << "the stream was cut without an error event";
    EXPECT_FALSE(o.done);
    EXPECT_NE(o.body.find("shutting_down"), std::string::npos);
    EXPECT_NE(o.body.find("shutdown_timeout_ms"), std::string::npos);
  }
  const std::string log = gateway_->process().stderr_text();
  EXPECT_NE(log.find("ended 3 stream(s) with an error event"), std::string::npos) << log;
  EXPECT_NE(log.find("status=503"), std::string::npos) << log;
}
}  // namespace
}  // namespace foreshore::testing
