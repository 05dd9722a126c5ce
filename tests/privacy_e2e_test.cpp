// The privacy guarantee end to end: a real gateway process whose cloud tier is
// a real HTTP server on loopback that records every byte it receives. Device-
// only data is sent through every policy, forced tiers, retries and fallbacks,
// with the cloud healthy and failing; the cloud must never see it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iterator>

#include "support/fault_server.h"
#include "support/process.h"
#include "support/secret_corpus.h"
#include "support/test_paths.h"

namespace foreshore::testing {
namespace {

using nlohmann::json;

class PrivacyE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::ifstream(shared_models_dir() + "/stories260K.gguf").good()) {
      GTEST_SKIP() << "stories260K.gguf not found in " << shared_models_dir();
    }
    config_ = temp_path(".yaml");
    decision_log_ = temp_path(".jsonl");
    std::ofstream(config_) << "server:\n"
                              "  decision_log: " +
                                  decision_log_ +
                                  "\n"
                                  "tiers:\n"
                                  "  edge:\n"
                                  "    kind: embedded\n"
                                  "    placement: device\n"
                                  "    model: stories260K\n"
                                  "    kv_memory_mb: 32\n"
                                  "  cloud:\n"
                                  "    kind: openai\n"
                                  "    placement: cloud\n"
                                  "    model: fault-model\n"
                                  "    endpoint: " +
                                  cloud_.base_url() +
                                  "\n"
                                  "    timeouts: {connect_ms: 1000, first_byte_ms: 2000, "
                                  "total_ms: 4000}\n"
                                  "models:\n"
                                  "  gpt-4o-mini: {tier: cloud, fallback: [edge]}\n"
                                  "routing:\n"
                                  "  policy: cloud\n"
                                  "  cascade: {min_mean_logprob: -0.01}\n"
                                  "privacy:\n"
                                  "  keywords:\n"
                                  "    - words: [patient]\n"
                                  "      class: device-only\n";
    gateway_ = std::make_unique<ServeProcess>(
        std::vector<std::string>{"--config", config_, "--quiet"},
        std::vector<std::string>{"FORESHORE_MODEL_PATH=" + shared_models_dir()});
    ASSERT_TRUE(gateway_->ok()) << gateway_->process().stderr_text();
  }
  void TearDown() override {
    std::remove(config_.c_str());
    std::remove(decision_log_.c_str());
  }

  HttpResult ask(const std::string& model, const std::string& content, bool stream,
                 const httplib::Headers& headers = {}) {
    json b = {{"model", model},
              {"messages", {{{"role", "user"}, {"content", content}}}},
              {"max_tokens", 12},
              {"temperature", 1.5},
              {"stream", stream}};
    return http_post(gateway_->port(), "/v1/chat/completions", b.dump(), headers);
  }

  bool cloud_saw(const std::string& needle) const {
    for (const auto& body : cloud_.received_bodies()) {
      if (body.find(needle) != std::string::npos) return true;
    }
    return false;
  }

  FaultServer cloud_;
  std::string config_;
  std::string decision_log_;
  std::unique_ptr<ServeProcess> gateway_;
};

TEST_F(PrivacyE2E, DeviceOnlyDataNeverReachesTheCloud) {
  const std::vector<std::string> secrets = {
      "my SSN is 078-05-1120",                   // detector
      "card 4111 1111 1111 1111 expires 09/29",  // detector, Luhn-valid
      "the patient reports chest pain",          // configured keyword
      "AKIAIOSFODNN7EXAMPLE is our key",         // secret
  };
  int answered = 0;
  for (FaultMode mode : {FaultMode::kNormal, FaultMode::kStatus500, FaultMode::kStatus429}) {
    cloud_.set_mode(mode);
    for (const std::string& secret : secrets) {
      for (const std::string model :
           {"foreshore", "foreshore/cloud", "foreshore/cascade", "foreshore/consistency",
            "foreshore/optimize", "foreshore/threshold"}) {
        for (bool stream : {false, true}) {
          auto r = ask(model, secret, stream);
          ASSERT_EQ(r.status, 200) << model << ": " << r.body;
          EXPECT_EQ(r.header("x-foreshore-tier"), "edge") << model;
          ++answered;
        }
      }
      // Forcing the cloud is refused outright, by header or by the tier's own name.
      auto forced = ask("foreshore", secret, false, {{"x-foreshore-tier", "cloud"}});
      EXPECT_EQ(forced.status, 403) << forced.body;
      forced = ask("cloud", secret, true);
      EXPECT_EQ(forced.status, 403) << forced.body;
      // The upstream's model id only prefers the cloud: the edge answers.
      auto preferred = ask("fault-model", secret, true);
      EXPECT_EQ(preferred.status, 200) << preferred.body;
      EXPECT_EQ(preferred.header("x-foreshore-tier"), "edge");
    }
    // Data declared device-only with nothing detectable in it.
    auto declared = ask("foreshore/cloud", "tell me a story", false,
                        {{"x-foreshore-data-class", "device-only"}});
    EXPECT_EQ(declared.status, 200);
    EXPECT_EQ(declared.header("x-foreshore-tier"), "edge");
    json b = {{"model", "foreshore/cloud"},
              {"metadata", {{"data_class", "device-only"}}},
              {"messages", {{{"role", "user"}, {"content", "a quiet secret story"}}}},
              {"max_tokens", 8}};
    auto meta = http_post(gateway_->port(), "/v1/chat/completions", b.dump());
    EXPECT_EQ(meta.status, 200);
    EXPECT_EQ(meta.header("x-foreshore-tier"), "edge");
  }
  EXPECT_GT(answered, 0);
  for (const std::string& s : {std::string("078-05-1120"), std::string("4111 1111 1111 1111"),
                               std::string("patient"), std::string("AKIAIOSFODNN7EXAMPLE"),
                               std::string("tell me a story"), std::string("quiet secret")}) {
    EXPECT_FALSE(cloud_saw(s)) << "the cloud received '" << s << "'";
  }
  // Every decision is logged, with the rule that fired and without the text.
  std::ifstream log(decision_log_);
  const std::string logged((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  EXPECT_NE(logged.find("device-only-stays-local"), std::string::npos);
  EXPECT_GE(std::count(logged.begin(), logged.end(), '\n'), answered);
  EXPECT_EQ(logged.find("078-05-1120"), std::string::npos);
  EXPECT_EQ(logged.find("AKIAIOSFODNN7EXAMPLE"), std::string::npos);
}

// Private data can hide in the arguments of an earlier tool call, in a tool
// definition or in a field the gateway passes through unread, all of which
// the cloud would receive as well as the messages.
TEST_F(PrivacyE2E, ToolCallsToolDefinitionsAndPassedThroughFieldsAreScannedToo) {
  const json tools = json::array(
      {{{"type", "function"},
        {"function", {{"name", "lookup"}, {"description", "Finds a customer record"}}}}});
  const json call = {
      {"id", "call_1"},
      {"type", "function"},
      {"function", {{"name", "lookup"}, {"arguments", R"({"ssn": "078-05-1120"})"}}}};
  json b = {{"model", "foreshore/cloud"},
            {"messages",
             {{{"role", "user"}, {"content", "find the customer"}},
              {{"role", "assistant"}, {"content", nullptr}, {"tool_calls", {call}}},
              {{"role", "tool"}, {"tool_call_id", "call_1"}, {"content", "found one"}},
              {{"role", "user"}, {"content", "summarise it"}}}},
            {"tools", tools},
            {"tool_choice", "none"},
            {"max_tokens", 8}};
  for (bool stream : {false, true}) {
    b["stream"] = stream;
    // No tool call is wanted, so the edge can answer: it does, not the cloud.
    auto r = http_post(gateway_->port(), "/v1/chat/completions", b.dump());
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.header("x-foreshore-tier"), "edge");
    // A call is wanted, which only the cloud could make: refused instead.
    json wants_call = b;
    wants_call["tool_choice"] = "auto";
    r = http_post(gateway_->port(), "/v1/chat/completions", wants_call.dump());
    EXPECT_EQ(r.status, 400) << r.body;
    // The secret in a tool's description.
    json described = b;
    described["messages"] = {{{"role", "user"}, {"content", "find the customer"}}};
    described["tools"][0]["function"]["description"] = "the patient record finder";
    r = http_post(gateway_->port(), "/v1/chat/completions", described.dump());
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.header("x-foreshore-tier"), "edge");
  }
  // The secret in a field the gateway only passes through.
  json predicted = {{"model", "foreshore/cloud"},
                    {"messages", {{{"role", "user"}, {"content", "rewrite the note"}}}},
                    {"prediction", {{"type", "content"}, {"content", "card 4111 1111 1111 1111"}}},
                    {"max_tokens", 8}};
  const auto r = http_post(gateway_->port(), "/v1/chat/completions", predicted.dump());
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-foreshore-tier"), "edge");
  EXPECT_FALSE(cloud_saw("078-05-1120"));
  EXPECT_FALSE(cloud_saw("patient"));
  EXPECT_FALSE(cloud_saw("4111"));
  EXPECT_TRUE(cloud_.received_bodies().empty());
}

TEST_F(PrivacyE2E, PublicDataDoesReachTheCloudSoTheCheckIsReal) {
  auto r = ask("foreshore/cloud", "what rhymes with orange?", false);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-foreshore-tier"), "cloud");
  EXPECT_TRUE(cloud_saw("what rhymes with orange?"));
}

TEST_F(PrivacyE2E, ExplainShowsTheRuleWithoutTheText) {
  json b = {{"messages", {{{"role", "user"}, {"content", "my SSN is 078-05-1120"}}}}};
  auto r = http_post(gateway_->port(), "/v1/route", b.dump());
  ASSERT_EQ(r.status, 200) << r.body;
  const json j = r.json();
  EXPECT_EQ(j["plan"]["kind"], "edge");
  EXPECT_FALSE(j["plan"]["cloud_allowed"].get<bool>());
  EXPECT_EQ(r.body.find("078-05-1120"), std::string::npos);
  EXPECT_TRUE(cloud_.received_bodies().empty());
}

TEST_F(PrivacyE2E, CloudFailureFallsBackToTheEdgeFlaggedDegraded) {
  cloud_.set_mode(FaultMode::kStatus500);
  auto r = ask("foreshore/cloud", "what rhymes with orange?", false);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-foreshore-tier"), "edge");
  EXPECT_EQ(r.header("x-foreshore-degraded"), "true");
  EXPECT_NE(r.header("x-foreshore-degraded-reason").find("failed"), std::string::npos);
  EXPECT_FALSE(r.header("x-foreshore-confidence").empty());
  EXPECT_TRUE(r.json()["foreshore"]["degraded"].get<bool>());
  EXPECT_NE(r.json()["foreshore"]["degraded_reason"].get<std::string>().find("cloud"),
            std::string::npos);

  // Streamed: the headers and every chunk name the edge, which answers,
  // not the cloud the plan tried first.
  r = ask("foreshore/cloud", "what rhymes with orange?", true);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-foreshore-tier"), "edge");
  EXPECT_NE(r.header("x-foreshore-model"), "fault-model");
  const auto events = sse_data(r.body);
  ASSERT_GE(events.size(), 2u);
  bool saw_degraded = false;
  for (const auto& e : events) {
    if (e == "[DONE]") continue;
    const json chunk = json::parse(e);
    EXPECT_NE(chunk["model"], "fault-model") << e;
    if (chunk.contains("foreshore")) {
      EXPECT_EQ(chunk["foreshore"]["tier"], "edge") << e;
      saw_degraded = saw_degraded || chunk["foreshore"]["degraded"].get<bool>();
    }
  }
  EXPECT_TRUE(saw_degraded);

  // With the breaker open the cloud is not even tried; the edge's answer to
  // a request the policy meant for the cloud is still a degraded one.
  for (int i = 0; i < 6; ++i) (void)ask("foreshore/cloud", "warm up the breaker", false);
  r = ask("foreshore/cloud", "what rhymes with orange?", false);
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-foreshore-tier"), "edge");
  EXPECT_EQ(r.header("x-foreshore-degraded"), "true") << r.body;
  EXPECT_NE(r.header("x-foreshore-degraded-reason").find("wanted the cloud"), std::string::npos)
      << r.header("x-foreshore-degraded-reason");
  // Readiness says so too: still serving, but degraded, and why.
  const auto ready = http_get(gateway_->port(), "/readyz");
  EXPECT_EQ(ready.status, 200);
  EXPECT_EQ(ready.json()["status"], "degraded") << ready.body;
  EXPECT_EQ(ready.json()["tier_states"]["cloud"]["breaker"], "open") << ready.body;
  EXPECT_EQ(ready.json()["tier_states"]["edge"]["state"], "ok") << ready.body;
}

namespace {

// A request body whose device-only secret sits in one field of many.
struct Placement {
  std::string what;
  json body;
};

std::string nest(int depth) {
  return std::string(static_cast<size_t>(depth), '[') +
         std::string(static_cast<size_t>(depth), ']');
}

}  // namespace

namespace {
std::vector<Placement> secret_placements(const std::string& secret) {
  const json user = {{"role", "user"}, {"content", "hello there"}};
  std::vector<Placement> out;
  const auto chat = [&](json messages) {
    return json{{"model", "foreshore/cloud"}, {"messages", std::move(messages)}, {"max_tokens", 6}};
  };
  json b = chat({user});
  b["stop"] = {secret};
  out.push_back({"stop", b});
  out.push_back({"message name", chat({{{"role", "user"}, {"name", secret}, {"content", "hi"}}})});
  out.push_back(
      {"unknown part type",
       chat({{{"role", "user"}, {"content", {{{"type", "input_text"}, {"text", secret}}}}}})});
  out.push_back(
      {"image url", chat({{{"role", "user"},
                           {"content",
                            {{{"type", "text"}, {"text", "what is this"}},
                             {{"type", "image_url"},
                              {"image_url", {{"url", "https://x.example/?q=" + secret}}}}}}}})});
  out.push_back(
      {"extra key in a text part",
       chat({{{"role", "user"},
              {"content",
               {{{"type", "text"}, {"text", "look"}, {"note", secret}},
                {{"type", "image_url"}, {"image_url", {{"url", "https://x.example/a.png"}}}}}}}})});
  const json call = {
      {"id", "call_1"},
      {"type", "function"},
      {"function", {{"name", "login"}, {"arguments", json{{"password", secret}}.dump()}}}};
  out.push_back({"tool call arguments",
                 chat({user,
                       {{"role", "assistant"}, {"content", nullptr}, {"tool_calls", {call}}},
                       {{"role", "tool"}, {"tool_call_id", "call_1"}, {"content", "done"}},
                       user})});
  b = chat({user});
  b["metadata"] = {{"customer", {{"deep", {{"deeper", secret}}}}}};
  out.push_back({"nested metadata", b});
  b = chat({user});
  b["x_unknown"] = {{"list", {1, {{"v", secret}}}}};
  out.push_back({"unknown top-level field", b});
  json c = {
      {"model", "foreshore/cloud"}, {"prompt", "say hi"}, {"stop", secret}, {"max_tokens", 6}};
  out.push_back({"completions stop", c});
  return out;
}
}  // namespace

// Each field a hostile tester used to get data past the scan, with secrets
// in the spellings that used to slip through: the cloud sees none of them,
// and the gateway answers every request (edge or a clear refusal).
TEST_F(PrivacyE2E, EveryFieldAndSpellingIsGuarded) {
  struct Secret {
    std::string text;
    std::string needle;  // what the cloud must never receive
  };
  const std::vector<Secret> secrets = {
      {"078\u201305\u20131120", "1120"},
      {"078.05.1120", "1120"},
      {"5555\u00A05555\u00A05555\u00A04444", "4444"},
      {"4012\u200B8888\u200B8888\u200B1881", "1881"},
      {"6011  1111\n1111 1117", "1117"},
      {"5105.1051.0510.5100", "5100"},
      {"GB82-WEST-1234-5698-7654-32", "7654"},
      {"\uFF10\uFF17\uFF18-\uFF10\uFF15-\uFF11\uFF11\uFF12\uFF10", "\uFF11\uFF12\uFF10"},
      // Arabic-Indic digits, an underscore grouping, percent-encoding, HTML
      // character references, an SSN spelled digit by digit.
      {"\u0663\u0665\u0663\u0660 \u0661\u0661\u0661\u0663 \u0663\u0663\u0663\u0660 "
       "\u0660\u0660\u0660\u0660",
       "\u0663\u0663\u0663\u0660 \u0660"},
      {"6011_0009_9013_9424", "9424"},
      {"3782%208224%206310%20005", "6310"},
      {"4000&#32;0566&#32;5566&#32;5556", "5556"},
      {"SSN 2 1 9 0 9 8 7 6 5", "8 7 6 5"},
      {"four zero one two, eight eight eight eight, eight eight eight eight, one eight eight one",
       "one eight eight one"},
      // Passwords on a command line and in another language.
      {"mysql -u root -pS3cretPass shop", "S3cretPass"},
      {"curl -u admin:Sup3rS3cret https://api.example.com", "Sup3rS3cret"},
      {"mi contrase\u00f1a es Sol2024!", "Sol2024!"},
      // National ids by their check digits.
      {"my SIN is 046 454 286", "454 286"},
      {"CPF 123.456.789-09", "789-09"},
  };
  int cases = 0;
  for (const Secret& secret : secrets) {
    for (const Placement& p : secret_placements(secret.text)) {
      for (bool stream : {false, true}) {
        json body = p.body;
        body["stream"] = stream;
        const std::string path =
            body.contains("prompt") ? "/v1/completions" : "/v1/chat/completions";
        auto r = http_post(gateway_->port(), path, body.dump());
        EXPECT_TRUE(r.status == 200 || r.status == 403 || r.status == 400)
            << p.what << " (" << secret.text << "): " << r.status << " " << r.body;
        if (r.status == 200) {
          EXPECT_EQ(r.header("x-foreshore-tier"), "edge") << p.what;
        }
        ++cases;
      }
    }
    EXPECT_FALSE(cloud_saw(secret.needle)) << "the cloud received '" << secret.text << "'";
  }
  EXPECT_GT(cases, 100);
  // The same request with public text does reach the cloud: the check is real.
  for (const Placement& p : secret_placements("the weather is nice")) {
    auto r = http_post(gateway_->port(),
                       p.body.contains("prompt") ? "/v1/completions" : "/v1/chat/completions",
                       p.body.dump());
    EXPECT_EQ(r.status, 200) << p.what << ": " << r.body;
  }
  EXPECT_TRUE(cloud_saw("the weather is nice"));
}

// Arrays nested 100,000 deep in any field used to crash the gateway (stack
// exhaustion while serialising); now a 400 that names the limit, and the
// gateway keeps serving.
TEST_F(PrivacyE2E, DeeplyNestedJsonIsRefusedWithoutACrash) {
  const std::string bomb = nest(100000);
  const std::string msgs = R"("messages":[{"role":"user","content":"hi"}])";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"/v1/chat/completions", "{" + msgs + R"(,"x_unknown":)" + bomb + "}"},
      {"/v1/chat/completions", "{" + msgs + R"(,"metadata":{"a":)" + bomb + "}}"},
      {"/v1/chat/completions",
       "{" + msgs + R"(,"tools":[{"type":"function","function":{"name":"f","parameters":)" + bomb +
           "}}]}"},
      {"/v1/chat/completions",
       R"({"messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"},"extra":)" +
           bomb + "}]}]}"},
      {"/v1/completions", R"({"prompt":"hi","x":)" + bomb + "}"},
      {"/v1/route", "{" + msgs + R"(,"x":)" + bomb + "}"},
  };
  for (const auto& [path, body] : cases) {
    auto r = http_post(gateway_->port(), path, body);
    EXPECT_EQ(r.status, 400) << path << ": " << r.body.substr(0, 200);
    EXPECT_NE(r.body.find("64 levels"), std::string::npos) << r.body.substr(0, 200);
  }
  auto alive = ask("foreshore/edge", "still there?", false);
  EXPECT_EQ(alive.status, 200);
  EXPECT_TRUE(cloud_.received_bodies().empty());
}

// A session pinned to the cloud, or a model alias that prefers it, is a
// preference: device-only data drops the cloud step and the edge answers.
TEST_F(PrivacyE2E, SessionPinsAndAliasesYieldToTheDataClass) {
  const httplib::Headers session = {{"x-foreshore-session", "conv-42"}};
  auto first = ask("foreshore", "what rhymes with orange?", false, session);
  ASSERT_EQ(first.status, 200) << first.body;
  ASSERT_EQ(first.header("x-foreshore-tier"), "cloud");
  auto second = ask("foreshore", "my SSN is 078-05-1120", false, session);
  EXPECT_EQ(second.status, 200) << second.body;
  EXPECT_EQ(second.header("x-foreshore-tier"), "edge");
  for (bool stream : {false, true}) {
    auto alias = ask("gpt-4o-mini", "my SSN is 078-05-1120", stream);
    EXPECT_EQ(alias.status, 200) << alias.body;
    EXPECT_EQ(alias.header("x-foreshore-tier"), "edge");
  }
  auto routed = http_post(gateway_->port(), "/v1/route",
                          json{{"model", "gpt-4o-mini"},
                               {"messages", {{{"role", "user"}, {"content", "SSN 078-05-1120"}}}}}
                              .dump());
  EXPECT_EQ(routed.status, 200);
  EXPECT_FALSE(cloud_saw("078-05-1120"));
}
// A secret named by its key in earlier tool-call arguments is caught as it
// is in a message: the scan reads the arguments unescaped.
TEST_F(PrivacyE2E, SecretsInToolCallArgumentsAreCaught) {
  for (const std::string key : {"password", "api_key", "client_secret"}) {
    const json call = {
        {"id", "call_1"},
        {"type", "function"},
        {"function", {{"name", "login"}, {"arguments", json{{key, "Zq8v!Lm3#Rt5@Wy7"}}.dump()}}}};
    const json b = {{"model", "foreshore/cloud"},
                    {"messages",
                     {{{"role", "user"}, {"content", "log me in"}},
                      {{"role", "assistant"}, {"content", nullptr}, {"tool_calls", {call}}},
                      {{"role", "tool"}, {"tool_call_id", "call_1"}, {"content", "ok"}},
                      {{"role", "user"}, {"content", "thanks"}}}},
                    {"max_tokens", 6}};
    auto r = http_post(gateway_->port(), "/v1/chat/completions", b.dump());
    EXPECT_EQ(r.status, 200) << key << ": " << r.body;
    EXPECT_EQ(r.header("x-foreshore-tier"), "edge") << key;
  }
  EXPECT_FALSE(cloud_saw("Zq8v"));
}
// A declared class only tightens: a second declaration (a proxy's header, a
// repeated field) can neither loosen it nor be skipped, and a declaration
// the gateway cannot read is refused rather than ignored.
TEST_F(PrivacyE2E, NoDeclarationLoosensAnother) {
  const std::string quiet = "my therapy notes, nothing a detector knows";
  auto chat = [&](const std::string& metadata, const httplib::Headers& headers) {
    const std::string body = R"({"model":"foreshore/cloud","max_tokens":8,)" + metadata +
                             R"("messages":[{"role":"user","content":")" + quiet + R"("}]})";
    return http_post(gateway_->port(), "/v1/chat/completions", body, headers);
  };
  const std::string device_only = R"("metadata":{"data_class":"device-only"},)";
  // Body and header disagree: the stricter holds, whichever carries it.
  auto r = chat(device_only, {{"x-foreshore-data-class", "public"}});
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-foreshore-tier"), "edge");
  r = chat(R"("metadata":{"data_class":"public"},)", {{"x-foreshore-data-class", "device_only"}});
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-foreshore-tier"), "edge");
  // Given twice: refused, naming the header.
  r = chat("", {{"x-foreshore-data-class", "public"}, {"x-foreshore-data-class", "device-only"}});
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("x-foreshore-data-class is given more than once"), std::string::npos)
      << r.body;
  // Empty (the HTTP library drops it): the body's declaration still holds.
  r = chat(device_only, {{"x-foreshore-data-class", ""}});
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-foreshore-tier"), "edge");
  // A field named twice, in metadata or at the top level (escaped or not).
  for (const std::string metadata :
       {R"("metadata":{"data_class":"device-only","data_class":"public"},)",
        R"("metadata":{"data_class":"device-only","data\u005fclass":"public"},)",
        R"("metadata":{"data_class":"device-only"},"metadata":{},)"}) {
    r = chat(metadata, {});
    EXPECT_EQ(r.status, 400) << metadata << ": " << r.body;
    EXPECT_EQ(r.json()["error"]["code"], "duplicate_field") << r.body;
  }
  // A declaration of the wrong type or empty.
  for (const std::string metadata :
       {R"("metadata":{"data_class":["device-only"]},)", R"("metadata":{"data_class":""},)",
        R"("metadata":{"data_class":1},)", R"("metadata":"device-only",)"}) {
    r = chat(metadata, {});
    EXPECT_EQ(r.status, 400) << metadata << ": " << r.body;
    EXPECT_NE(r.body.find("metadata"), std::string::npos) << r.body;
  }
  r = chat(R"("metadata":{"data_class":"secret"},)", {});
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("metadata.data_class"), std::string::npos) << r.body;
  EXPECT_FALSE(cloud_saw("therapy notes"));
  // The same request declared public does reach the cloud: the check is real.
  r = chat(R"("metadata":{"data_class":"public"},)", {{"x-foreshore-data-class", "public"}});
  EXPECT_EQ(r.status, 200) << r.body;
  EXPECT_EQ(r.header("x-foreshore-tier"), "cloud");
  EXPECT_TRUE(cloud_saw("therapy notes"));
}

// Hostile or careless input gets a clear 4xx, never a 5xx that SDKs retry.
TEST_F(PrivacyE2E, BadInputGetsAClearClientError) {
  // A routing header that is not UTF-8.
  json b = {{"messages", {{{"role", "user"}, {"content", "hi"}}}}};
  auto r =
      http_post(gateway_->port(), "/v1/route", b.dump(), {{"x-foreshore-session", "\xff\xfe"}});
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("x-foreshore-session"), std::string::npos) << r.body;
  r = http_post(gateway_->port(), "/v1/chat/completions", b.dump(),
                {{"x-foreshore-data-class", "\xc3\x28"}});
  EXPECT_EQ(r.status, 400) << r.body;
  // A message without content.
  r = http_post(gateway_->port(), "/v1/chat/completions",
                json{{"messages", {{{"role", "user"}}}}}.dump());
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("messages[0].content"), std::string::npos) << r.body;
  // Device-only data longer than the edge's context: nothing can serve it,
  // and retrying will not change that.
  std::string long_secret = "my SSN is 078-05-1120.";
  while (long_secret.size() < 20000) long_secret += " and then the story went on";
  r = ask("foreshore", long_secret, false);
  EXPECT_EQ(r.status, 400) << r.body.substr(0, 300);
  EXPECT_EQ(r.json()["error"]["code"], "context_length_exceeded") << r.body.substr(0, 300);
  EXPECT_TRUE(cloud_.received_bodies().empty());
  // /v1/route reads a body over 8 KiB whatever its Content-Type (curl's
  // default is a form type, which the HTTP library otherwise caps).
  httplib::Client client("127.0.0.1", gateway_->port());
  const std::string big =
      json{{"messages", {{{"role", "user"}, {"content", std::string(20000, 'a')}}}}}.dump();
  auto routed = client.Post("/v1/route", big, "application/x-www-form-urlencoded");
  ASSERT_TRUE(routed);
  EXPECT_EQ(routed->status, 200) << routed->body.substr(0, 200);
}
// ------------------------------------------------------------ property test

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr int kPropertyCases = 1000;  // the sanitizers make each request several times slower
#else
constexpr int kPropertyCases = 6000;
#endif

// The request with `text` placed in one of the fields that reach a cloud
// tier, at a random depth where the field allows one.
json place(const std::string& text, Rng& rng) {
  json messages = json::array({{{"role", "user"}, {"content", "tell me a short story"}}});
  json b = {{"max_tokens", 4}};
  const auto nested = [&](json leaf) {
    const int depth = rng.below(6);
    for (int d = 0; d < depth; ++d)
      leaf = rng.below(2) ? json{{"k" + std::to_string(d), leaf}} : json::array({leaf});
    return leaf;
  };
  switch (rng.below(12)) {
    case 0:
      messages.push_back({{"role", "user"}, {"content", "about this: " + text}});
      break;
    case 1:
      messages.insert(messages.begin(), {{"role", "system"}, {"content", text}});
      break;
    case 2:
      messages[0]["name"] = text;
      break;
    case 3:
      b["stop"] = {text};
      break;
    case 4:
      b["metadata"] = {{"note", nested(text)}};
      break;
    case 5:
      b["x_client_field"] = nested(text);
      break;
    case 6:
      b["tools"] = {{{"type", "function"},
                     {"function",
                      {{"name", "f"},
                       {"description", "helper"},
                       {"parameters", {{"type", "object"}, {"description", nested(text)}}}}}}};
      b["tool_choice"] = "none";
      break;
    case 7: {
      const json call = {
          {"id", "c1"},
          {"type", "function"},
          {"function", {{"name", "f"}, {"arguments", json{{"value", nested(text)}}.dump()}}}};
      messages.push_back({{"role", "assistant"}, {"content", nullptr}, {"tool_calls", {call}}});
      messages.push_back({{"role", "tool"}, {"tool_call_id", "c1"}, {"content", "ok"}});
      messages.push_back({{"role", "user"}, {"content", "go on"}});
      break;
    }
    case 8:
      messages[0]["content"] = {{{"type", "input_text"}, {"text", text}}};
      break;
    case 9:
      messages[0]["content"] = {
          {{"type", "text"}, {"text", "see"}},
          {{"type", "image_url"}, {"image_url", {{"url", "https://x.test/?" + text}}}}};
      break;
    case 10:
      messages[0]["content"] = {
          {{"type", "text"}, {"text", "see"}, {"caption", text}},
          {{"type", "image_url"}, {"image_url", {{"url", "https://x.test/a.png"}}}}};
      break;
    default:
      messages[0]["content"] = "tell me about " + text;
  }
  b["messages"] = std::move(messages);
  return b;
}

}  // namespace

// Thousands of random requests, each with a device-only secret of a random
// category and spelling in a random field at a random depth, through every
// policy, alias and model name, streamed or not, in sessions or not: the
// recording upstream never receives one, while the same requests with public
// text do reach it (so the check is real). The seed is printed on failure.
TEST_F(PrivacyE2E, SeededPropertyNoSecretEverReachesTheCloud) {
  // FSH_PROPERTY_SEED explores other cases; the default keeps CI repeatable.
  const char* env_seed = std::getenv("FSH_PROPERTY_SEED");
  const uint64_t seed = env_seed != nullptr ? std::strtoull(env_seed, nullptr, 10) : 20261206;
  Rng rng(seed);
  static const char* kModels[] = {
      "foreshore",          "foreshore/cloud",     "foreshore/cascade", "foreshore/consistency",
      "foreshore/optimize", "foreshore/threshold", "gpt-4o-mini",       "fault-model"};
  std::vector<std::string> needles;
  int public_sent = 0;
  for (int i = 0; i < kPropertyCases; ++i) {
    const bool control = i % 10 == 9;
    const std::string text =
        control ? "zebra" + std::to_string(i) + "crossing" : make_secret(rng).text;
    json b = place(text, rng);
    b["model"] = kModels[rng.below(static_cast<int>(std::size(kModels)))];
    b["stream"] = rng.below(2) == 1;
    httplib::Headers headers;
    if (rng.below(3) == 0)
      headers.insert({"x-foreshore-session", "s" + std::to_string(rng.below(20))});
    auto r = http_post(gateway_->port(), "/v1/chat/completions", b.dump(), headers);
    ASSERT_TRUE(r.status == 200 || r.status == 400 || r.status == 403)
        << "seed " << seed << " case " << i << ": " << r.status << " " << r.body.substr(0, 300);
    if (control) {
      ++public_sent;
      continue;
    }
    // As the cloud would receive it: JSON-escaped once, or twice inside
    // tool-call arguments.
    const std::string once = json(text).dump();
    needles.push_back(once.substr(1, once.size() - 2));
    const std::string twice = json(once.substr(1, once.size() - 2)).dump();
    needles.push_back(twice.substr(1, twice.size() - 2));
  }
  const auto bodies = cloud_.received_bodies();
  for (const auto& body : bodies) {
    for (const auto& needle : needles) {
      ASSERT_EQ(body.find(needle), std::string::npos) << "seed " << seed << ": the cloud received '"
                                                      << needle << "' in " << body.substr(0, 400);
    }
  }
  int public_seen = 0;
  for (int i = 9; i < kPropertyCases; i += 10) {
    public_seen += cloud_saw("zebra" + std::to_string(i) + "crossing") ? 1 : 0;
  }
  EXPECT_GT(public_seen, public_sent / 4) << "public controls must reach the cloud";
}
}  // namespace
}  // namespace foreshore::testing
