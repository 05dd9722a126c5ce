// Running plans over real tiers: the embedded engine on stories260K and a real
// HTTP upstream on loopback that can be told to fail. Every test also checks
// what the upstream received, because privacy is proven by what arrives there.
#include "exec/exec.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "support/fault_server.h"
#include "support/test_paths.h"

namespace foreshore::exec {
namespace {

using testing::FaultMode;
using testing::FaultServer;

class ExecTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto model = std::filesystem::path(testing::shared_models_dir()) / "stories260K.gguf";
    if (!std::filesystem::exists(model)) GTEST_SKIP() << "stories260K.gguf not found";
    backend::TierConfig edge;
    edge.name = "edge";
    edge.kind = "embedded";
    edge.placement = backend::Placement::kDevice;
    edge.model = model.string();
    edge.max_concurrency = 2;
    edge.kv_memory_mb = 32;
    edge.context_length = 512;
    backend::TierConfig cloud;
    cloud.name = "cloud";
    cloud.kind = "openai";
    cloud.placement = backend::Placement::kCloud;
    cloud.endpoint = server_.base_url();
    cloud.model = "fault-model";
    cloud.first_byte_timeout_ms = 2000;
    cloud.total_timeout_ms = 5000;
    auto e = backend::create_backend(edge);
    ASSERT_TRUE(e.ok()) << e.error().message;
    auto c = backend::create_backend(cloud);
    ASSERT_TRUE(c.ok()) << c.error().message;
    ExecutorSettings settings;
    settings.retry.base_backoff_ms = 5;
    settings.retry.max_backoff_ms = 20;
    settings.breaker.failure_threshold = 3;
    settings.breaker.open_ms = 60000;
    executor_ = std::make_unique<Executor>(
        std::map<std::string, std::shared_ptr<backend::Backend>>{{"edge", *e}, {"cloud", *c}},
        settings, nullptr);
  }

  static route::Plan plan(route::PlanKind kind, bool cloud_allowed) {
    route::Plan p;
    p.kind = kind;
    p.edge_tier = "edge";
    p.cloud_tier = "cloud";
    p.cloud_allowed = cloud_allowed;
    return p;
  }

  static backend::BackendRequest request(const std::string& text, float temperature = 0.0f) {
    backend::BackendRequest r;
    r.messages = {{"user", text}};
    r.params.max_tokens = 24;
    r.params.temperature = temperature;
    r.params.seed = 7;
    return r;
  }

  // A cascade with a strict confidence bar: with unsure_request() the edge
  // model is unsure on purpose and the plan escalates.
  static route::Plan escalating_cascade() {
    auto p = plan(route::PlanKind::kCascade, true);
    p.cascade.min_mean_logprob = -0.5;
    return p;
  }
  // Sampling at a high temperature makes the small model pick unlikely tokens.
  static backend::BackendRequest unsure_request() { return request("zq xv kj wp", 3.0f); }

  // A stream sink that collects what the client would see.
  static backend::DeltaSink append_to(std::string& out) {
    return [&out](const backend::Delta& d) {
      out += d.text;
      return true;
    };
  }

  bool cloud_saw(const std::string& needle) const {
    for (const auto& b : server_.received_bodies()) {
      if (b.find(needle) != std::string::npos) return true;
    }
    return false;
  }

  FaultServer server_;
  std::unique_ptr<Executor> executor_;
};

TEST_F(ExecTest, ConfidentEdgeIsServedWithoutTouchingTheCloud) {
  auto p = plan(route::PlanKind::kCascade, true);
  p.cascade.min_mean_logprob = -5.0;
  p.cascade.min_token_logprob = -50.0;
  p.cascade.max_mean_entropy = 50.0;
  auto r = executor_->run(p, request("Once upon a time"), {});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->tier, "edge");
  EXPECT_FALSE(r->escalated);
  ASSERT_TRUE(r->confidence.has_value());
  EXPECT_GT(*r->confidence, 0.0);
  EXPECT_TRUE(server_.received_bodies().empty());
}

TEST_F(ExecTest, UnsureEdgeEscalatesToTheCloud) {
  auto p = escalating_cascade();
  auto r = executor_->run(p, unsure_request(), {});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_TRUE(r->escalated);
  EXPECT_EQ(r->tier, "cloud");
  EXPECT_TRUE(r->completion.text.starts_with("echo:")) << r->completion.text;
  EXPECT_TRUE(cloud_saw("zq xv kj wp"));
}

TEST_F(ExecTest, StreamingCascadeReleasesHeldTokensOnlyOnce) {
  auto p = plan(route::PlanKind::kCascade, true);
  p.cascade.min_mean_logprob = -5.0;
  p.cascade.min_token_logprob = -50.0;
  p.cascade.max_mean_entropy = 50.0;
  p.cascade.hold_back_tokens = 4;
  std::string streamed;
  auto r = executor_->run(p, request("Once upon a time"), append_to(streamed));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(streamed, r->completion.text);
}

TEST_F(ExecTest, StreamingEscalationSendsOnlyTheCloudAnswer) {
  auto p = escalating_cascade();
  p.cascade.hold_back_tokens = 4;
  std::string streamed;
  auto r = executor_->run(p, unsure_request(), append_to(streamed));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->tier, "cloud");
  EXPECT_EQ(streamed, r->completion.text);
}

TEST_F(ExecTest, CloudDyingMidStreamAfterEscalationIsAnErrorNotASplicedAnswer) {
  server_.set_mode(FaultMode::kDieMidStream);
  server_.set_die_after_chunks(2);
  server_.set_reply("CLOUDTEXT one two three four five six");
  auto p = escalating_cascade();
  p.cascade.hold_back_tokens = 4;
  std::string streamed;
  auto r = executor_->run(p, unsure_request(), append_to(streamed));
  ASSERT_FALSE(r.ok()) << "served: " << r->completion.text;
  // The client saw a part of the cloud's answer and nothing of the edge's after it.
  const std::string reply = "CLOUDTEXT one two three four five six";
  ASSERT_FALSE(streamed.empty());
  EXPECT_EQ(reply.rfind(streamed, 0), 0u) << streamed;
  EXPECT_LT(streamed.size(), reply.size());
}

TEST_F(ExecTest, BothDegradedServesTheEdgeAnswerFlagged) {
  server_.set_mode(FaultMode::kStatus500);
  auto p = escalating_cascade();
  auto r = executor_->run(p, unsure_request(), {});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->tier, "edge");
  EXPECT_TRUE(r->degraded);
  ASSERT_TRUE(r->confidence.has_value());
  EXPECT_FALSE(r->completion.text.empty());
}

TEST_F(ExecTest, CloudFailureRetriesThenFallsBackToTheEdge) {
  server_.set_mode(FaultMode::kStatus503);
  server_.set_retry_after("0");
  auto r = executor_->run(plan(route::PlanKind::kCloud, true), request("Once upon a time"), {});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->tier, "edge");
  EXPECT_TRUE(r->degraded);
  EXPECT_EQ(server_.received_bodies().size(), 3u);  // max_attempts
}

TEST_F(ExecTest, LatencyBudgetAbandonsASilentCloudAndFallsBack) {
  // The cloud would answer after 1.5 s (inside its own first-byte timeout of
  // 2 s); the request's budget to the first token is 150 ms.
  server_.set_mode(FaultMode::kDelayFirstByte);
  server_.set_first_byte_delay(std::chrono::milliseconds(1500));
  auto req = request("Once upon a time");
  req.first_token_deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(150);
  auto r = executor_->run(plan(route::PlanKind::kCloud, true), req, {});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->tier, "edge");
  EXPECT_TRUE(r->degraded);
  // One attempt: a retry would start after the budget.
  EXPECT_EQ(server_.received_bodies().size(), 1u);
  bool budget_named = false;
  for (const auto& step : r->trace)
    budget_named |= step.find("latency budget") != std::string::npos;
  EXPECT_TRUE(budget_named);
}

TEST_F(ExecTest, DeviceOnlyPlanNeverReachesTheCloudOnAnyPath) {
  const std::string secret = "SSN 123-45-6789";
  // Every plan kind, with the cloud healthy and with it failing, streaming and not.
  for (FaultMode mode : {FaultMode::kNormal, FaultMode::kStatus500}) {
    server_.set_mode(mode);
    for (auto kind : {route::PlanKind::kEdge, route::PlanKind::kCloud, route::PlanKind::kCascade,
                      route::PlanKind::kConsistency}) {
      auto p = plan(kind, false);
      p.cascade.min_mean_logprob = -0.01;  // would escalate if it could
      for (bool stream : {false, true}) {
        auto r =
            executor_->run(p, request(secret + " zq xv", 3.0f),
                           stream ? backend::DeltaSink([](const backend::Delta&) { return true; })
                                  : backend::DeltaSink());
        // Even a cloud plan that forbids the cloud ends on the edge, never out.
        ASSERT_TRUE(r.ok()) << r.error().message;
        EXPECT_EQ(r->tier, "edge");
      }
    }
  }
  EXPECT_TRUE(server_.received_bodies().empty());
}

TEST_F(ExecTest, ConsistencyKeepsEdgeWhenAnswersAgree) {
  auto edge_only =
      executor_->run(plan(route::PlanKind::kEdge, true), request("Once upon a time"), {});
  ASSERT_TRUE(edge_only.ok());
  server_.set_reply(edge_only->completion.text);
  auto p = plan(route::PlanKind::kConsistency, true);
  p.consistency_min_similarity = 0.8;
  auto r = executor_->run(p, request("Once upon a time"), {});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->tier, "edge");
  ASSERT_TRUE(r->similarity.has_value());
  EXPECT_GE(*r->similarity, 0.8);

  server_.set_reply("a completely different answer about quantum chromodynamics");
  r = executor_->run(p, request("Once upon a time"), {});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->tier, "cloud");
  EXPECT_LT(*r->similarity, 0.8);
}

TEST_F(ExecTest, BreakerOpensAfterRepeatedFailures) {
  server_.set_mode(FaultMode::kStatus500);
  auto p = plan(route::PlanKind::kCloud, true);
  p.edge_fallback_allowed = false;
  auto r = executor_->run(p, request("hi"), {});
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(executor_->breaker_state("cloud"), BreakerState::kOpen);
  const size_t before = server_.received_bodies().size();
  r = executor_->run(p, request("hi"), {});
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("circuit"), std::string::npos) << r.error().message;
  EXPECT_EQ(server_.received_bodies().size(), before);  // failed fast
}

TEST(Guard, HalfOpenProbe) {
  CircuitBreaker b({1, 0});
  EXPECT_TRUE(b.allow());
  b.record_failure();
  EXPECT_TRUE(b.allow());   // open_ms 0: straight to half-open, one probe
  EXPECT_FALSE(b.allow());  // the probe is in flight
  b.record_success();
  EXPECT_EQ(b.state(), BreakerState::kClosed);
}

TEST(Guard, BackoffHonoursRetryAfter) {
  Error e = make_error(ErrorKind::kUnavailable, "busy");
  e.upstream_status = 429;
  e.retry_after_seconds = 1.5;
  EXPECT_GE(backoff_delay({}, 1, e).count(), 1500);
  EXPECT_TRUE(is_retryable(e));
  EXPECT_FALSE(is_retryable(make_error(ErrorKind::kInvalidArgument, "bad")));
}

TEST(Similarity, Words) {
  EXPECT_DOUBLE_EQ(answer_similarity("The cat sat.", "the CAT sat"), 1.0);
  EXPECT_DOUBLE_EQ(answer_similarity("a b", "c d"), 0.0);
  EXPECT_NEAR(answer_similarity("a b c", "a b d"), 0.5, 1e-9);
}

}  // namespace
}  // namespace foreshore::exec
