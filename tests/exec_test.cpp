// Running plans over real tiers: the embedded engine on stories260K and a real
// HTTP upstream on loopback that can be told to fail. Every test also checks
// what the upstream received, because privacy is proven by what arrives there.
#include "exec/exec.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <future>
#include <mutex>
#include <thread>

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
    edge.placement = backend::Placement::kDevice;
    edge.model = model.string();
    edge.max_concurrency = 2;
    auto& edge_settings = edge.settings.emplace<backend::EmbeddedTierSettings>();
    edge_settings.kv_memory_mb = 32;
    edge_settings.context_length = 512;
    backend::TierConfig cloud;
    cloud.name = "cloud";
    cloud.placement = backend::Placement::kCloud;
    cloud.model = "fault-model";
    auto& cloud_settings = cloud.settings.emplace<backend::OpenAiTierSettings>();
    cloud_settings.endpoint = server_.base_url();
    cloud_settings.first_byte_timeout_ms = 2000;
    cloud_settings.total_timeout_ms = 5000;
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

TEST_F(ExecTest, TopP0KeepsOnlyTheMostLikelyToken) {
  auto greedy =
      executor_->run(plan(route::PlanKind::kEdge, false), request("Once upon a time"), {});
  ASSERT_TRUE(greedy.ok()) << greedy.error().message;
  auto req = request("Once upon a time", 1.5f);
  req.params.top_p = 0.0f;
  auto r = executor_->run(plan(route::PlanKind::kEdge, false), req, {});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->completion.text, greedy->completion.text);
}

TEST_F(ExecTest, AParameterTheEdgeRefusesIsTheClientsErrorNotAFallback) {
  auto req = request("Once upon a time");
  req.params.logprobs = true;
  req.params.top_logprobs = 21;
  for (bool cloud_allowed : {false, true}) {
    SCOPED_TRACE(cloud_allowed);
    auto r = executor_->run(plan(route::PlanKind::kEdge, cloud_allowed), req, {});
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().kind, ErrorKind::kInvalidArgument) << r.error().message;
    EXPECT_NE(r.error().message.find("top_logprobs"), std::string::npos) << r.error().message;
    EXPECT_EQ(r.error().message.find("may not be sent to the cloud"), std::string::npos);
  }
  EXPECT_TRUE(server_.received_bodies().empty());
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
  // The refusal says when to come back: when the breaker will probe.
  EXPECT_GE(r.error().retry_after_seconds, 1.0);
}

TEST(Guard, HalfOpenProbe) {
  CircuitBreaker b({1, 0});
  EXPECT_TRUE(b.allow());
  b.record_failure();
  EXPECT_TRUE(b.allow());   // open_ms 0: straight to half-open, one probe
  EXPECT_FALSE(b.allow());  // the probe is in flight
  b.record_success();
  EXPECT_EQ(b.state(), BreakerState::kClosed);
  // Open with its cooldown run out, it reads as half-open before any call
  // probes it, and says when a probe may go while the cooldown runs.
  CircuitBreaker cooled({1, 0});
  cooled.record_failure();
  EXPECT_EQ(cooled.state(), BreakerState::kHalfOpen);
  EXPECT_EQ(cooled.seconds_until_probe(), 0.0);
  CircuitBreaker waiting({1, 60000});
  waiting.record_failure();
  EXPECT_EQ(waiting.state(), BreakerState::kOpen);
  EXPECT_GT(waiting.seconds_until_probe(), 50.0);
}

// A probe that ends saying nothing of the tier's health (a guard refusal, the
// client's own fault, an upstream's 429) frees the probe slot: the next call
// probes, instead of the breaker staying half-open for good.
TEST(Guard, AProbeThatSaysNothingLetsTheNextOneThrough) {
  CircuitBreaker b({1, 0});
  b.record_failure();
  EXPECT_TRUE(b.allow());
  EXPECT_FALSE(b.allow());
  b.record_neither();
  EXPECT_TRUE(b.allow());
  b.record_success();
  EXPECT_EQ(b.state(), BreakerState::kClosed);
}

TEST_F(ExecTest, AnUpstream429ProbeLeavesTheBreakerAbleToClose) {
  ExecutorSettings settings;
  settings.retry.max_attempts = 1;
  settings.breaker.failure_threshold = 1;
  settings.breaker.open_ms = 0;
  Executor executor({{"cloud", executor_->backend("cloud")}}, settings, nullptr);
  auto p = plan(route::PlanKind::kCloud, true);
  p.edge_fallback_allowed = false;
  server_.set_mode(FaultMode::kStatus500);
  EXPECT_FALSE(executor.run(p, request("hi"), {}).ok());
  server_.set_mode(FaultMode::kStatus429);
  EXPECT_FALSE(executor.run(p, request("hi"), {}).ok());  // the half-open probe
  server_.set_mode(FaultMode::kNormal);
  auto r = executor.run(p, request("hi"), {});
  EXPECT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(executor.breaker_state("cloud"), BreakerState::kClosed);
}

// A model alias's cloud tier failing over to a device tier is the fallback
// of last resort, flagged as when the router planned the cloud.
TEST_F(ExecTest, AnAliasFallingBackFromTheCloudToTheDeviceIsFlaggedDegraded) {
  server_.set_mode(FaultMode::kStatus500);
  auto p = plan(route::PlanKind::kCloud, true);
  p.forced = true;
  p.edge_fallback_allowed = false;
  p.fallback_tiers = {"edge"};
  auto r = executor_->run(p, request("hi"), {});
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->tier, "edge");
  EXPECT_TRUE(r->fell_back);
  EXPECT_TRUE(r->degraded);
  EXPECT_NE(r->degraded_reason.find("cloud"), std::string::npos) << r->degraded_reason;
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

// ---------------------------------------------------------------- shadow

using namespace std::chrono_literals;

ShadowJob job(route::DataClass data_class, const std::string& id = "r") {
  ShadowJob j;
  j.request_id = id;
  j.data_class = data_class;
  j.messages = {{"user", "What is the capital of France?"}};
  j.edge_answer = "Paris.";
  j.edge_model_version = "edge-v1";
  return j;
}

ShadowRunner echo_runner(std::atomic<int>& calls) {
  return [&calls](const ShadowJob& j) -> Result<ShadowAnswer> {
    ++calls;
    return ShadowAnswer{j.edge_answer, "cloud-v1"};
  };
}

TEST(ShadowTest, DeviceOnlyJobsAreNeverAccepted) {
  std::atomic<int> calls{0};
  std::mutex mu;
  std::vector<std::string> seen_by_cloud;
  ShadowSampler sampler(
      {.fraction = 1.0,
       .rate_per_second = 0,
       .queue_capacity = 1000,
       .data_classes = {route::DataClass::kPublic, route::DataClass::kPreferLocal,
                        route::DataClass::kContractual, route::DataClass::kDeviceOnly},
       .seed = 1},
      [&](const ShadowJob& j) -> Result<ShadowAnswer> {
        ++calls;
        std::lock_guard lock(mu);
        seen_by_cloud.push_back(j.request_id);
        return ShadowAnswer{j.edge_answer, "cloud-v1"};
      });
  for (int i = 0; i < 200; ++i) {
    EXPECT_FALSE(sampler.maybe_submit(job(route::DataClass::kDeviceOnly, "secret")));
  }
  ShadowJob unset;  // a job whose class nobody set counts as device-only
  unset.request_id = "unset";
  EXPECT_FALSE(sampler.maybe_submit(unset));
  EXPECT_TRUE(sampler.maybe_submit(job(route::DataClass::kPublic, "public")));
  ASSERT_TRUE(sampler.wait_idle(5s));
  const ShadowCounters c = sampler.counters();
  EXPECT_EQ(c.refused_device_only, 201u);
  EXPECT_EQ(c.accepted, 1u);
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(seen_by_cloud, std::vector<std::string>{"public"});
}

TEST(ShadowTest, OnlyPublicDataIsShadowedByDefault) {
  std::atomic<int> calls{0};
  ShadowSampler sampler({.fraction = 1.0, .rate_per_second = 0, .seed = 1}, echo_runner(calls));
  EXPECT_FALSE(sampler.maybe_submit(job(route::DataClass::kContractual)));
  EXPECT_FALSE(sampler.maybe_submit(job(route::DataClass::kPreferLocal)));
  EXPECT_TRUE(sampler.maybe_submit(job(route::DataClass::kPublic)));
  ASSERT_TRUE(sampler.wait_idle(5s));
  EXPECT_EQ(sampler.counters().refused_data_class, 2u);
  EXPECT_EQ(calls.load(), 1);
}

TEST(ShadowTest, SampledFractionIsRespectedAndReproducible) {
  const auto accepted_with_seed = [](uint64_t seed) {
    std::atomic<int> calls{0};
    ShadowSampler sampler(
        {.fraction = 0.25, .rate_per_second = 0, .queue_capacity = 100000, .seed = seed},
        echo_runner(calls));
    for (int i = 0; i < 20000; ++i) (void)sampler.maybe_submit(job(route::DataClass::kPublic));
    EXPECT_TRUE(sampler.wait_idle(30s));
    const ShadowCounters c = sampler.counters();
    EXPECT_EQ(c.offered, 20000u);
    EXPECT_EQ(c.accepted + c.not_sampled, 20000u);
    EXPECT_EQ(c.completed, c.accepted);
    EXPECT_EQ(calls.load(), static_cast<int>(c.accepted));
    return c.accepted;
  };
  const uint64_t a = accepted_with_seed(42);
  EXPECT_NEAR(static_cast<double>(a) / 20000, 0.25, 0.015);
  EXPECT_EQ(accepted_with_seed(42), a);

  std::atomic<int> calls{0};
  ShadowSampler none({.fraction = 0.0, .rate_per_second = 0, .seed = 7}, echo_runner(calls));
  for (int i = 0; i < 1000; ++i) EXPECT_FALSE(none.maybe_submit(job(route::DataClass::kPublic)));
}

TEST(ShadowTest, RateLimitIsATokenBucket) {
  std::atomic<int> calls{0};
  auto now = std::chrono::steady_clock::time_point{} + 1000h;
  ShadowSampler sampler({.fraction = 1.0,
                         .rate_per_second = 5,
                         .queue_capacity = 1000,
                         .seed = 1,
                         .now = [&] { return now; }},
                        echo_runner(calls));
  int accepted = 0;
  for (int i = 0; i < 100; ++i) accepted += sampler.maybe_submit(job(route::DataClass::kPublic));
  EXPECT_EQ(accepted, 5);  // the burst
  now += 1s;
  for (int i = 0; i < 100; ++i) accepted += sampler.maybe_submit(job(route::DataClass::kPublic));
  EXPECT_EQ(accepted, 10);
  now += 200ms;
  for (int i = 0; i < 100; ++i) accepted += sampler.maybe_submit(job(route::DataClass::kPublic));
  EXPECT_EQ(accepted, 11);
  EXPECT_EQ(sampler.counters().rate_limited, 289u);
}

TEST(ShadowTest, ScoresAgreement) {
  EXPECT_EQ(normalize_answer("  The  Cat, sat!\n"), "the cat sat");
  EXPECT_EQ(normalize_answer("Ünïcode stays"), "Ünïcode stays");
  EXPECT_DOUBLE_EQ(word_jaccard("a b c d", "a b c e"), 3.0 / 5);
  EXPECT_DOUBLE_EQ(word_jaccard("", "  "), 1.0);
  EXPECT_DOUBLE_EQ(word_jaccard("yes", ""), 0.0);
  const AgreementScore exact = score_agreement("Paris.", "paris", 0.9);
  EXPECT_TRUE(exact.exact);
  EXPECT_TRUE(exact.agreed);
  const AgreementScore close = score_agreement("a b c d", "a b c e", 0.6);
  EXPECT_FALSE(close.exact);
  EXPECT_TRUE(close.agreed);
  EXPECT_FALSE(score_agreement("a b c d", "a b c e", 0.61).agreed);
}

TEST(ShadowTest, AgreementIsCountedPerVersionPair) {
  // The cloud answers "paris" to everything and reports the version the test sets.
  std::atomic<int> cloud_version{1};
  ShadowSampler sampler(
      {.fraction = 1.0, .rate_per_second = 0, .agreement_threshold = 0.5, .seed = 3},
      [&](const ShadowJob&) -> Result<ShadowAnswer> {
        return ShadowAnswer{"Paris", "cloud-v" + std::to_string(cloud_version.load())};
      });
  const auto submit = [&](const std::string& edge_version, const std::string& answer) {
    ShadowJob j = job(route::DataClass::kPublic);
    j.edge_model_version = edge_version;
    j.edge_answer = answer;
    EXPECT_TRUE(sampler.maybe_submit(std::move(j)));
    EXPECT_TRUE(sampler.wait_idle(5s));
  };
  submit("edge-v1", "Paris");          // exact
  submit("edge-v1", "It is Paris");    // 1/3: disagrees
  submit("edge-v1", "Paris, France");  // 1/2: agrees
  cloud_version = 2;
  submit("edge-v1", "London");  // 0
  submit("edge-v2", "paris!");  // exact
  const auto stats = sampler.agreement();
  ASSERT_EQ(stats.size(), 3u);
  EXPECT_EQ(stats[0].edge_model_version, "edge-v1");
  EXPECT_EQ(stats[0].cloud_model_version, "cloud-v1");
  EXPECT_EQ(stats[0].jobs, 3u);
  EXPECT_EQ(stats[0].agreed, 2u);
  EXPECT_EQ(stats[0].exact, 1u);
  EXPECT_NEAR(stats[0].mean_similarity, (1.0 + 1.0 / 3 + 0.5) / 3, 1e-12);
  EXPECT_NEAR(stats[0].agreement_rate(), 2.0 / 3, 1e-12);
  EXPECT_EQ(stats[1].cloud_model_version, "cloud-v2");
  EXPECT_EQ(stats[1].agreed, 0u);
  EXPECT_EQ(stats[2].edge_model_version, "edge-v2");
  EXPECT_EQ(stats[2].agreed, 1u);

  ShadowSampler failing({.fraction = 1.0, .rate_per_second = 0, .seed = 3},
                        [](const ShadowJob&) -> Result<ShadowAnswer> {
                          return make_error(ErrorKind::kUnavailable, "cloud down");
                        });
  EXPECT_TRUE(failing.maybe_submit(job(route::DataClass::kPublic)));
  ASSERT_TRUE(failing.wait_idle(5s));
  EXPECT_EQ(failing.counters().failed, 1u);
  EXPECT_TRUE(failing.agreement().empty());

  // A reloaded config's sampler goes on from its predecessor's figures.
  ShadowSampler next({.fraction = 1.0, .rate_per_second = 0, .seed = 3},
                     [](const ShadowJob&) -> Result<ShadowAnswer> {
                       return ShadowAnswer{"Paris", "cloud-v1"};
                     });
  next.carry_over(sampler);
  next.carry_over(failing);
  EXPECT_EQ(next.counters().completed, 5u);
  EXPECT_EQ(next.counters().failed, 1u);
  ASSERT_EQ(next.agreement().size(), 3u);
  EXPECT_EQ(next.agreement()[0].jobs, 3u);
  EXPECT_NEAR(next.agreement()[0].mean_similarity, stats[0].mean_similarity, 1e-12);
}

// Opens a gate once, on demand or at the latest when the test ends, so a
// failed assertion cannot leave the sampler's worker waiting forever.
class Gate {
 public:
  ~Gate() { open(); }
  void open() {
    if (!opened_.exchange(true)) promise_.set_value();
  }
  void wait() const { future_.wait(); }

 private:
  std::promise<void> promise_;
  std::shared_future<void> future_ = promise_.get_future().share();
  std::atomic<bool> opened_{false};
};

TEST(ShadowTest, NeverBlocksWhenTheWorkerIsStuck) {
  Gate release;
  std::promise<void> entered;
  std::atomic<bool> first{true};
  ShadowSampler sampler({.fraction = 1.0, .rate_per_second = 0, .queue_capacity = 4, .seed = 5},
                        [&](const ShadowJob& j) -> Result<ShadowAnswer> {
                          if (first.exchange(false)) entered.set_value();
                          release.wait();
                          return ShadowAnswer{j.edge_answer, "cloud-v1"};
                        });
  ASSERT_TRUE(sampler.maybe_submit(job(route::DataClass::kPublic)));
  ASSERT_EQ(entered.get_future().wait_for(5s), std::future_status::ready);
  const auto start = std::chrono::steady_clock::now();
  int accepted = 0;
  for (int i = 0; i < 1000; ++i) accepted += sampler.maybe_submit(job(route::DataClass::kPublic));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 500ms);
  EXPECT_EQ(accepted, 4);
  EXPECT_EQ(sampler.counters().dropped, 996u);
  EXPECT_EQ(sampler.counters().queued, 4u);
  release.open();
  ASSERT_TRUE(sampler.wait_idle(5s));
  EXPECT_EQ(sampler.counters().completed, 5u);
}

TEST(ShadowTest, StopCancelsTheRunningJobAndDiscardsTheQueue) {
  std::promise<void> entered;
  ShadowSampler sampler({.fraction = 1.0, .rate_per_second = 0, .queue_capacity = 8, .seed = 5},
                        [&](const ShadowJob& j) -> Result<ShadowAnswer> {
                          entered.set_value();
                          // A backend would watch the same flag.
                          while (!j.cancelled->load()) std::this_thread::sleep_for(1ms);
                          return make_error(ErrorKind::kCancelled, "stopped");
                        });
  ASSERT_TRUE(sampler.maybe_submit(job(route::DataClass::kPublic)));
  ASSERT_EQ(entered.get_future().wait_for(5s), std::future_status::ready);
  ASSERT_TRUE(sampler.maybe_submit(job(route::DataClass::kPublic)));
  ASSERT_TRUE(sampler.maybe_submit(job(route::DataClass::kPublic)));
  sampler.stop();
  const ShadowCounters c = sampler.counters();
  EXPECT_EQ(c.discarded, 2u);
  EXPECT_EQ(c.failed, 1u);
  EXPECT_FALSE(sampler.maybe_submit(job(route::DataClass::kPublic)));
}

TEST(ShadowTest, AdaptiveThresholdMovesTowardsTheTargetWithinBounds) {
  ThresholdController controller({.target_agreement = 0.9,
                                  .deadband = 0.05,
                                  .initial = 0.5,
                                  .min = 0.35,
                                  .max = 0.6,
                                  .step = 0.1,
                                  .window = 1});
  EXPECT_NEAR(controller.update(0.5), 0.4, 1e-12);    // below target: more conservative
  EXPECT_NEAR(controller.update(0.5), 0.35, 1e-12);   // clamped at min
  EXPECT_NEAR(controller.update(0.92), 0.35, 1e-12);  // inside the deadband: hold
  EXPECT_NEAR(controller.update(0.99), 0.45, 1e-12);  // comfortably above: relax
  EXPECT_NEAR(controller.update(1.0), 0.55, 1e-12);
  EXPECT_NEAR(controller.update(1.0), 0.6, 1e-12);  // clamped at max

  std::vector<std::pair<double, double>> calls;
  std::mutex mu;
  ShadowSampler sampler(
      {.fraction = 1.0,
       .rate_per_second = 0,
       .queue_capacity = 100,
       .seed = 9,
       .adaptive = AdaptiveThresholdOptions{.target_agreement = 0.9,
                                            .initial = 0.5,
                                            .min = 0.1,
                                            .max = 0.9,
                                            .step = 0.1,
                                            .window = 4},
       .on_threshold =
           [&](double rate, double threshold) {
             std::lock_guard lock(mu);
             calls.emplace_back(rate, threshold);
           }},
      [](const ShadowJob& j) -> Result<ShadowAnswer> {
        return ShadowAnswer{j.request_id == "agree" ? j.edge_answer : "something else", "cloud-v1"};
      });
  for (int i = 0; i < 8; ++i) {
    EXPECT_TRUE(sampler.maybe_submit(job(route::DataClass::kPublic, i == 0 ? "agree" : "no")));
  }
  ASSERT_TRUE(sampler.wait_idle(5s));
  std::lock_guard lock(mu);
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_NEAR(calls[0].first, 0.25, 1e-12);
  EXPECT_NEAR(calls[0].second, 0.4, 1e-12);
  EXPECT_NEAR(calls[1].first, 0.0, 1e-12);
  EXPECT_NEAR(calls[1].second, 0.3, 1e-12);
  EXPECT_NEAR(sampler.adaptive_threshold().value(), 0.3, 1e-12);
}

TEST(ShadowTest, ValidateRejectsBadOptions) {
  EXPECT_TRUE(ShadowSampler::validate({.fraction = 0.1}).ok());
  EXPECT_FALSE(ShadowSampler::validate({.fraction = 1.5}).ok());
  EXPECT_FALSE(ShadowSampler::validate({.rate_per_second = -1}).ok());
  EXPECT_FALSE(ShadowSampler::validate({.queue_capacity = 0}).ok());
  EXPECT_FALSE(ShadowSampler::validate({.agreement_threshold = 2}).ok());
  EXPECT_FALSE(
      ShadowSampler::validate({.adaptive = AdaptiveThresholdOptions{.min = 0.9, .max = 0.1}}).ok());
}

}  // namespace
}  // namespace foreshore::exec
