// The C API of libforeshore (include/foreshore.h), called as an app calls it:
// through the shared library, which exports nothing else. The cloud tier is
// a real OpenAI-compatible server on a loopback port (FaultServer).
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <tuple>

#include "foreshore.h"
#include "support/fault_server.h"
#include "support/test_paths.h"

namespace {

using foreshore::testing::FaultServer;
using foreshore::testing::shared_models_dir;

constexpr const char* kRequest =
    R"({"model": "foreshore", "max_tokens": 6, "temperature": 0,
        "messages": [{"role": "user", "content": "Once upon a time"}]})";

std::string take(char* text) {
  std::string out = text != nullptr ? text : "";
  foreshore_string_free(text);
  return out;
}

class CapiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(foreshore_set_model_search_path(shared_models_dir().c_str()), FORESHORE_OK);
  }
  void TearDown() override { ASSERT_EQ(foreshore_set_model_search_path(nullptr), FORESHORE_OK); }

  // An embedded stories260K edge and a cloud tier at the fault server.
  std::string config() const {
    return "tiers:\n"
           "  edge: {kind: embedded, placement: device, model: stories260K, threads: 1}\n"
           "  cloud: {kind: openai, placement: cloud, endpoint: '" +
           cloud_.base_url() + "', model: fault-model}\n" + "routing: {policy: threshold}\n";
  }
  foreshore_hybrid* create_hybrid() {
    const std::string yaml = config();
    foreshore_hybrid_params params = foreshore_hybrid_default_params();
    params.config_yaml = yaml.c_str();
    params.log = [](foreshore_log_level, const char* line, void* lines) {
      static_cast<std::atomic<int>*>(lines)->fetch_add(line[0] != '\0' ? 1 : 0);
    };
    params.log_user_data = &log_lines_;
    foreshore_hybrid* hybrid = nullptr;
    EXPECT_EQ(foreshore_hybrid_create(&params, &hybrid), FORESHORE_OK) << foreshore_last_error();
    return hybrid;
  }

  FaultServer cloud_;
  std::atomic<int> log_lines_{0};
};

TEST_F(CapiTest, GeneratesStreamedText) {
  foreshore_model_params params = foreshore_model_default_params();
  params.threads = 1;
  int progress_calls = 0;
  params.progress = [](float progress, void* calls) {
    EXPECT_GE(progress, 0.0f);
    EXPECT_LE(progress, 1.0f);
    ++*static_cast<int*>(calls);
    return true;
  };
  params.progress_user_data = &progress_calls;
  foreshore_model* model = nullptr;
  ASSERT_EQ(foreshore_model_load("stories260K", &params, &model), FORESHORE_OK)
      << foreshore_last_error();
  EXPECT_GE(progress_calls, 2);

  foreshore_generate_params gen = foreshore_generate_default_params();
  gen.max_tokens = 12;
  gen.temperature = 0;
  gen.chat = false;
  std::string streamed;
  gen.on_token = [](const char* text, size_t length, void* into) {
    static_cast<std::string*>(into)->append(text, length);
    return true;
  };
  gen.user_data = &streamed;
  char* text = nullptr;
  ASSERT_EQ(foreshore_model_generate(model, "Once upon a time", &gen, &text), FORESHORE_OK)
      << foreshore_last_error();
  const std::string whole = take(text);
  EXPECT_FALSE(whole.empty());
  EXPECT_EQ(streamed, whole);
  foreshore_model_free(model);
}

TEST_F(CapiTest, TokenCallbackCancels) {
  foreshore_model* model = nullptr;
  ASSERT_EQ(foreshore_model_load("stories260K", nullptr, &model), FORESHORE_OK);
  foreshore_generate_params gen = foreshore_generate_default_params();
  gen.max_tokens = 64;
  gen.chat = false;
  gen.on_token = [](const char*, size_t, void*) { return false; };
  char* text = nullptr;
  EXPECT_EQ(foreshore_model_generate(model, "Once upon a time", &gen, &text),
            FORESHORE_ERR_CANCELLED);
  EXPECT_NE(std::string(foreshore_last_error()).find("cancelled"), std::string::npos);
  foreshore_string_free(text);
  foreshore_model_free(model);
}

TEST_F(CapiTest, ProgressCallbackAbortsTheLoad) {
  foreshore_model_params params = foreshore_model_default_params();
  params.progress = [](float, void*) { return false; };
  foreshore_model* model = nullptr;
  EXPECT_EQ(foreshore_model_load("stories260K", &params, &model), FORESHORE_ERR_CANCELLED);
  EXPECT_EQ(model, nullptr);
  EXPECT_NE(std::string(foreshore_last_error()).find("aborted"), std::string::npos);
}

TEST_F(CapiTest, MissingModelSaysWhereItLooked) {
  foreshore_model* model = nullptr;
  EXPECT_EQ(foreshore_model_load("no-such-model", nullptr, &model), FORESHORE_ERR_NOT_FOUND);
  EXPECT_NE(std::string(foreshore_last_error()).find(shared_models_dir()), std::string::npos)
      << foreshore_last_error();
  EXPECT_STREQ(foreshore_status_name(FORESHORE_ERR_NOT_FOUND), "not_found");
}

TEST_F(CapiTest, RoutesAndExplains) {
  foreshore_hybrid* hybrid = create_hybrid();
  ASSERT_NE(hybrid, nullptr);
  foreshore_route_hints hints{};
  hints.data_class = "device-only";
  char* json = nullptr;
  ASSERT_EQ(foreshore_hybrid_route(hybrid, kRequest, &hints, &json), FORESHORE_OK)
      << foreshore_last_error();
  const auto decision = nlohmann::json::parse(take(json));
  EXPECT_EQ(decision["plan"]["kind"], "edge");
  EXPECT_EQ(decision["plan"]["cloud_allowed"], false);

  hints.data_class = "top-secret";
  EXPECT_EQ(foreshore_hybrid_route(hybrid, kRequest, &hints, &json),
            FORESHORE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(foreshore_last_error()).find("top-secret"), std::string::npos)
      << foreshore_last_error();

  // The hint does not loosen the body's own declaration.
  hints.data_class = "public";
  const char* declared =
      R"({"metadata":{"data_class":"device-only"},"messages":[{"role":"user","content":"hi"}]})";
  ASSERT_EQ(foreshore_hybrid_route(hybrid, declared, &hints, &json), FORESHORE_OK)
      << foreshore_last_error();
  EXPECT_EQ(nlohmann::json::parse(take(json))["plan"]["cloud_allowed"], false);
  foreshore_hybrid_free(hybrid);
}

TEST_F(CapiTest, RefusesAThreadCountOutOfRange) {
  foreshore_model_params params = foreshore_model_default_params();
  params.threads = 100000;
  foreshore_model* model = nullptr;
  EXPECT_EQ(foreshore_model_load("stories260K", &params, &model), FORESHORE_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(model, nullptr);
  EXPECT_NE(std::string(foreshore_last_error()).find("threads 100000"), std::string::npos)
      << foreshore_last_error();
}

// Arguments the header rules out, and a prompt past the context, are the
// caller's to fix (INVALID_ARGUMENT), not a tier that retrying may bring back.
TEST_F(CapiTest, RefusesWhatNoRetryCanFix) {
  foreshore_model_params params = foreshore_model_default_params();
  params.context_length = -10;
  foreshore_model* model = nullptr;
  EXPECT_EQ(foreshore_model_load("stories260K", &params, &model), FORESHORE_ERR_INVALID_ARGUMENT);
  params.context_length = 64;
  ASSERT_EQ(foreshore_model_load("stories260K", &params, &model), FORESHORE_OK)
      << foreshore_last_error();
  char* text = nullptr;
  foreshore_generate_params gen = foreshore_generate_default_params();
  gen.chat = false;
  std::string long_prompt;
  for (int i = 0; i < 200; ++i) long_prompt += "Once upon a time ";
  EXPECT_EQ(foreshore_model_generate(model, long_prompt.c_str(), &gen, &text),
            FORESHORE_ERR_INVALID_ARGUMENT);
  foreshore_string_free(text);
  for (const auto& bad :
       {std::make_tuple(std::nanf(""), 0.9f, 40), std::make_tuple(-1.0f, 0.9f, 40),
        std::make_tuple(0.8f, 2.0f, 40), std::make_tuple(0.8f, 0.9f, -5)}) {
    gen = foreshore_generate_default_params();
    std::tie(gen.temperature, gen.top_p, gen.top_k) = bad;
    text = nullptr;
    EXPECT_EQ(foreshore_model_generate(model, "hi", &gen, &text), FORESHORE_ERR_INVALID_ARGUMENT);
    foreshore_string_free(text);
  }
  foreshore_model_free(model);
}

TEST_F(CapiTest, RunsHybridChatOnEdgeAndCloud) {
  foreshore_hybrid* hybrid = create_hybrid();
  ASSERT_NE(hybrid, nullptr);

  foreshore_chat_params params = foreshore_chat_default_params();
  params.hints.data_class = "device-only";
  char* json = nullptr;
  int status = 0;
  ASSERT_EQ(foreshore_hybrid_chat(hybrid, kRequest, &params, &json, &status), FORESHORE_OK)
      << foreshore_last_error();
  auto reply = nlohmann::json::parse(take(json));
  EXPECT_EQ(status, 200);
  EXPECT_EQ(reply["foreshore"]["tier"], "edge");
  EXPECT_EQ(reply["object"], "chat.completion");

  params = foreshore_chat_default_params();
  params.hints.tier = "cloud";
  std::string streamed;
  params.on_token = [](const char* text, size_t length, void* into) {
    static_cast<std::string*>(into)->append(text, length);
    return true;
  };
  params.user_data = &streamed;
  ASSERT_EQ(foreshore_hybrid_chat(hybrid, kRequest, &params, &json, &status), FORESHORE_OK)
      << foreshore_last_error();
  reply = nlohmann::json::parse(take(json));
  EXPECT_EQ(reply["foreshore"]["tier"], "cloud");
  EXPECT_EQ(reply["choices"][0]["message"]["content"], "echo: Once upon a time");
  EXPECT_EQ(streamed, "echo: Once upon a time");
  ASSERT_EQ(cloud_.received_bodies().size(), 1u);
  EXPECT_GE(log_lines_.load(), 2);
  foreshore_hybrid_free(hybrid);
}

TEST_F(CapiTest, DeviceOnlyDataNeverReachesTheCloudEvenWhenAskedFor) {
  foreshore_hybrid* hybrid = create_hybrid();
  ASSERT_NE(hybrid, nullptr);
  foreshore_chat_params params = foreshore_chat_default_params();
  params.hints.data_class = "device-only";
  params.hints.tier = "cloud";
  char* json = nullptr;
  int status = 0;
  const foreshore_status result = foreshore_hybrid_chat(hybrid, kRequest, &params, &json, &status);
  const std::string body = take(json);
  if (result == FORESHORE_OK) {
    EXPECT_EQ(nlohmann::json::parse(body)["foreshore"]["tier"], "edge");
  } else {
    EXPECT_GE(status, 400) << body;
  }
  EXPECT_TRUE(cloud_.received_bodies().empty());
  foreshore_hybrid_free(hybrid);
}

TEST_F(CapiTest, ChatsFromSeveralThreadsAtOnce) {
  foreshore_hybrid* hybrid = create_hybrid();
  ASSERT_NE(hybrid, nullptr);
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      foreshore_chat_params params = foreshore_chat_default_params();
      params.hints.tier = i % 2 == 0 ? "cloud" : "edge";
      char* json = nullptr;
      int status = 0;
      if (foreshore_hybrid_chat(hybrid, kRequest, &params, &json, &status) == FORESHORE_OK) ++ok;
      foreshore_string_free(json);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 4);
  foreshore_hybrid_free(hybrid);
}

TEST_F(CapiTest, AppMemoryPressureSteersTheRouter) {
  foreshore_hybrid* hybrid = create_hybrid();
  ASSERT_NE(hybrid, nullptr);
  EXPECT_EQ(foreshore_hybrid_set_memory_pressure(hybrid, 7), FORESHORE_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(foreshore_hybrid_set_memory_pressure(hybrid, -2), FORESHORE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(foreshore_last_error()).find("0 (none) to 3"), std::string::npos);
  ASSERT_EQ(foreshore_hybrid_set_memory_pressure(hybrid, 3), FORESHORE_OK);
  char* json = nullptr;
  ASSERT_EQ(foreshore_hybrid_route(hybrid, kRequest, nullptr, &json), FORESHORE_OK);
  const auto decision = nlohmann::json::parse(take(json));
  EXPECT_EQ(decision["signals"]["memory_pressure"], 3) << decision.dump();
  EXPECT_EQ(foreshore_hybrid_set_memory_pressure(hybrid, -1), FORESHORE_OK);
  foreshore_hybrid_free(hybrid);
}

TEST_F(CapiTest, BadConfigurationIsExplained) {
  foreshore_hybrid_params params = foreshore_hybrid_default_params();
  foreshore_hybrid* hybrid = nullptr;
  EXPECT_EQ(foreshore_hybrid_create(&params, &hybrid), FORESHORE_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(foreshore_last_error()).find("exactly one"), std::string::npos);
  params.config_yaml = "tiers:\n  edge: {kind: warp-drive}\n";
  EXPECT_NE(foreshore_hybrid_create(&params, &hybrid), FORESHORE_OK);
  EXPECT_NE(std::string(foreshore_last_error()).find("warp-drive"), std::string::npos)
      << foreshore_last_error();
  EXPECT_EQ(hybrid, nullptr);
}

}  // namespace
