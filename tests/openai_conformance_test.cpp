// Runs tests/openai_conformance/conformance.mjs (the official `openai` npm
// client) against a real gateway with an edge tier and a cloud tier.
// scripts/npm-install.sh installs the client; without it the test skips.
#include <gtest/gtest.h>

#include <filesystem>

#include "support/fault_server.h"
#include "support/process.h"
#include "support/test_paths.h"

namespace foreshore::testing {
namespace {

using namespace std::chrono_literals;

std::filesystem::path script_dir() {
  return std::filesystem::path(FSH_SOURCE_DIR) / "tests" / "openai_conformance";
}

// Why conformance.mjs cannot run here; empty when it can.
std::string why_not_runnable(const std::filesystem::path& dir) {
  if (!std::filesystem::exists(dir / "node_modules" / "openai" / "package.json")) {
    return "the openai npm client is not installed; run scripts/npm-install.sh";
  }
  auto probe = Process::start({"node", "--version"});
  if (!probe || probe->wait(30s) != 0) return "node is not installed";
  return {};
}

TEST(OpenAiConformance, OfficialClientParsesEverything) {
  const std::filesystem::path dir = script_dir();
  if (const std::string why = why_not_runnable(dir); !why.empty()) GTEST_SKIP() << why;

  const std::vector<std::string> env = {"FORESHORE_MODEL_PATH=" + shared_models_dir()};
  ServeProcess cloud({"-m", "stories260K", "--quiet"}, env);
  ASSERT_TRUE(cloud.ok()) << cloud.process().stderr_text();
  ServeProcess gateway({"-m", "stories260K", "--upstream", cloud.base_url(), "--upstream-model",
                        "stories260K", "--quiet"},
                       env);
  ASSERT_TRUE(gateway.ok()) << gateway.process().stderr_text();

  auto node =
      Process::start({"node", (dir / "conformance.mjs").string()},
                     {"FORESHORE_URL=" + gateway.base_url(), "FORESHORE_MODELS=edge,cloud"});
  ASSERT_TRUE(node);
  const auto rc = node->wait(120s);
  EXPECT_EQ(rc, 0) << "stdout:\n" << node->stdout_text() << "\nstderr:\n" << node->stderr_text();
  EXPECT_NE(node->stdout_text().find("all checks passed"), std::string::npos)
      << node->stdout_text();
}

// Tool calls, which stories260K cannot make: the cloud tier is the fault
// server, which answers offered tools with a call.
TEST(OpenAiConformance, OfficialClientParsesToolCalls) {
  const std::filesystem::path dir = script_dir();
  if (const std::string why = why_not_runnable(dir); !why.empty()) GTEST_SKIP() << why;

  FaultServer cloud;
  ServeProcess gateway({"-m", "stories260K", "--upstream", cloud.base_url(), "--upstream-model",
                        "fault-model", "--quiet"},
                       {"FORESHORE_MODEL_PATH=" + shared_models_dir()});
  ASSERT_TRUE(gateway.ok()) << gateway.process().stderr_text();
  auto node = Process::start({"node", (dir / "conformance.mjs").string()},
                             {"FORESHORE_URL=" + gateway.base_url(), "FORESHORE_MODELS=cloud",
                              "FORESHORE_TOOLS_MODEL=cloud"});
  ASSERT_TRUE(node);
  const auto rc = node->wait(120s);
  EXPECT_EQ(rc, 0) << "stdout:\n" << node->stdout_text() << "\nstderr:\n" << node->stderr_text();
  EXPECT_NE(node->stdout_text().find("ok   tool call, streamed"), std::string::npos)
      << node->stdout_text();
}

}  // namespace
}  // namespace foreshore::testing
