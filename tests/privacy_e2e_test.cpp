// The privacy guarantee end to end: a real gateway process whose cloud tier is
// a real HTTP server on loopback that records every byte it receives. Device-
// only data is sent through every policy, forced tiers, retries and fallbacks,
// with the cloud healthy and failing; the cloud must never see it.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <iterator>

#include "support/fault_server.h"
#include "support/process.h"
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
      // Forcing the cloud is refused outright, by header or by the tier's model name.
      auto forced = ask("foreshore", secret, false, {{"x-foreshore-tier", "cloud"}});
      EXPECT_EQ(forced.status, 403) << forced.body;
      forced = ask("fault-model", secret, true);
      EXPECT_EQ(forced.status, 403) << forced.body;
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
  EXPECT_FALSE(r.header("x-foreshore-confidence").empty());
  EXPECT_TRUE(r.json()["foreshore"]["degraded"].get<bool>());
}

}  // namespace
}  // namespace foreshore::testing
