// Routing decisions: hard rules first, then each policy's plan, and the
// explanation record.
#include "route/router.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

namespace foreshore::route {
namespace {

std::vector<TierProfile> two_tiers(int32_t edge_context = 2048) {
  TierProfile edge;
  edge.name = "edge";
  edge.on_device = true;
  edge.max_data_class = DataClass::kDeviceOnly;
  edge.context_length = edge_context;
  edge.prior_ttft_ms = 40;
  edge.quality = 0.8;
  TierProfile cloud;
  cloud.name = "cloud";
  cloud.on_device = false;
  cloud.price_input_per_mtok = 2.5;
  cloud.price_output_per_mtok = 10;
  cloud.prior_ttft_ms = 400;
  cloud.quality = 0.95;
  return {edge, cloud};
}

std::unique_ptr<Router> make_router(RouterConfig config = {}, int32_t edge_context = 2048) {
  // No complexity model file: tests set the threshold and see complexity 0.
  config.complexity_model = "none";
  auto r = Router::create(std::move(config), two_tiers(edge_context));
  EXPECT_TRUE(r.ok()) << r.error().message;
  return std::move(r).value();
}

Decision decide(const Router& r, std::string_view text, RouteInput in = {}) {
  in.texts = std::span<const std::string_view>(&text, 1);
  return r.decide(in);
}

TEST(Router, DeviceOnlyDataNeverGetsACloudStep) {
  for (PolicyKind p : {PolicyKind::kThreshold, PolicyKind::kCascade, PolicyKind::kConsistency,
                       PolicyKind::kOptimize, PolicyKind::kCloud, PolicyKind::kEdge}) {
    RouterConfig c;
    c.threshold = 0.0;  // every prompt is "hard"
    auto r = make_router(c);
    RouteInput in;
    in.policy = p;
    const Decision d = decide(*r, "my ssn is 123-45-6789, please summarise", in);
    EXPECT_EQ(d.signals.sensitivity.data_class, DataClass::kDeviceOnly);
    EXPECT_FALSE(d.plan.cloud_allowed) << to_string(p);
    EXPECT_EQ(d.plan.kind, PlanKind::kEdge) << to_string(p);
    EXPECT_NE(std::find(d.rules_fired.begin(), d.rules_fired.end(), "device-only-stays-local"),
              d.rules_fired.end());
  }
}

TEST(Router, DeclaredDeviceOnlyWithCleanText) {
  auto r = make_router();
  RouteInput in;
  in.declared_class = DataClass::kDeviceOnly;
  in.policy = PolicyKind::kCloud;
  const Decision d = decide(*r, "what is the capital of France?", in);
  EXPECT_EQ(d.plan.kind, PlanKind::kEdge);
  EXPECT_FALSE(d.plan.cloud_allowed);
}

TEST(Router, ForcedCloudTierRefusedForDeviceOnlyData) {
  auto r = make_router();
  RouteInput in;
  in.forced_tier = "cloud";
  const Decision d = decide(*r, "card 4111 1111 1111 1111", in);
  EXPECT_EQ(d.plan.kind, PlanKind::kReject);
  EXPECT_FALSE(d.plan.cloud_allowed);
  EXPECT_NE(d.plan.reason.find("refused"), std::string::npos) << d.plan.reason;
}

TEST(Router, ForcedTierHonouredOtherwise) {
  auto r = make_router();
  RouteInput in;
  in.forced_tier = "cloud";
  EXPECT_EQ(decide(*r, "hello", in).plan.kind, PlanKind::kCloud);
  in.forced_tier = "edge";
  EXPECT_EQ(decide(*r, "hello", in).plan.kind, PlanKind::kEdge);
  in.forced_tier = "nope";
  EXPECT_EQ(decide(*r, "hello", in).plan.kind, PlanKind::kReject);
}

TEST(Router, ThresholdPolicyFollowsComplexity) {
  RouterConfig low;
  low.threshold = 0.0;  // complexity 0 >= 0: cloud
  EXPECT_EQ(decide(*make_router(low), "hello").plan.kind, PlanKind::kCloud);
  RouterConfig high;
  high.threshold = 1.0;
  EXPECT_EQ(decide(*make_router(high), "hello").plan.kind, PlanKind::kEdge);
}

TEST(Router, PolicyFromRequest) {
  auto r = make_router();
  RouteInput in;
  in.policy = PolicyKind::kCascade;
  EXPECT_EQ(decide(*r, "hello", in).plan.kind, PlanKind::kCascade);
  in.policy = PolicyKind::kConsistency;
  EXPECT_EQ(decide(*r, "hello", in).plan.kind, PlanKind::kConsistency);
}

TEST(Router, PreferLocalStaysOnEdgeWhenItCan) {
  auto r = make_router();
  RouteInput in;
  in.policy = PolicyKind::kCloud;
  const Decision d = decide(*r, "write to me at jane.doe@example.com", in);
  EXPECT_EQ(d.signals.sensitivity.data_class, DataClass::kPreferLocal);
  EXPECT_EQ(d.plan.kind, PlanKind::kEdge);
  EXPECT_TRUE(d.plan.cloud_allowed);  // may still fall back to the cloud
}

TEST(Router, OversizedPromptGoesToCloudOrIsRejectedWhenPrivate) {
  auto r = make_router({}, 64);
  const std::string big(2000, 'a');
  RouteInput in;
  in.policy = PolicyKind::kEdge;
  Decision d = decide(*r, big, in);
  EXPECT_EQ(d.plan.kind, PlanKind::kCloud);
  EXPECT_FALSE(d.signals.fits_edge_context);
  in.declared_class = DataClass::kDeviceOnly;
  d = decide(*r, big, in);
  EXPECT_EQ(d.plan.kind, PlanKind::kReject);
  EXPECT_NE(d.plan.reason.find("context"), std::string::npos) << d.plan.reason;
}

// Tools or JSON mode: an edge answer would ignore them, so every policy
// plans the cloud, with no edge fallback, and a forced edge is refused.
TEST(Router, WhatOnlyTheCloudCanDoNeverPlansTheEdge) {
  auto r = make_router();
  for (PolicyKind p : {PolicyKind::kThreshold, PolicyKind::kCascade, PolicyKind::kConsistency,
                       PolicyKind::kOptimize, PolicyKind::kEdge, PolicyKind::kCloud}) {
    RouteInput in;
    in.policy = p;
    in.edge_unsupported = "tools";
    const Decision d = decide(*r, "where is my order", in);
    EXPECT_EQ(d.plan.kind, PlanKind::kCloud) << to_string(p);
    EXPECT_FALSE(d.plan.edge_fallback_allowed) << to_string(p);
    EXPECT_EQ(d.signals.edge_unsupported, "tools");
    EXPECT_NE(std::find(d.rules_fired.begin(), d.rules_fired.end(), "edge-lacks-feature"),
              d.rules_fired.end());
  }
  RouteInput in;
  in.edge_unsupported = "response_format json_schema";
  in.forced_tier = "edge";
  Decision d = decide(*r, "hello", in);
  EXPECT_EQ(d.plan.kind, PlanKind::kReject);
  EXPECT_NE(d.plan.reason.find("response_format json_schema"), std::string::npos) << d.plan.reason;
  // A forced cloud tier's fallback chain loses its device tiers.
  in.forced_tier = "cloud";
  in.fallback_tiers = {"edge"};
  d = decide(*r, "hello", in);
  EXPECT_EQ(d.plan.kind, PlanKind::kCloud);
  EXPECT_TRUE(d.plan.fallback_tiers.empty());
  // Private data with such a request: no tier may serve it.
  in = {};
  in.edge_unsupported = "tools";
  in.declared_class = DataClass::kDeviceOnly;
  d = decide(*r, "hello", in);
  EXPECT_EQ(d.plan.kind, PlanKind::kReject);
  EXPECT_FALSE(d.plan.cloud_allowed);
}

TEST(Router, BothTiersUnavailableRejects) {
  auto r = make_router();
  RouteInput in;
  in.edge_available = false;
  in.cloud_available = false;
  const Decision d = decide(*r, "hello", in);
  EXPECT_EQ(d.plan.kind, PlanKind::kReject);
  EXPECT_NE(d.plan.reason.find("no tier"), std::string::npos);
}

TEST(Router, CloudUnavailableServesEdge) {
  RouterConfig c;
  c.threshold = 0.0;
  auto r = make_router(c);
  RouteInput in;
  in.cloud_available = false;
  EXPECT_EQ(decide(*r, "hello", in).plan.kind, PlanKind::kEdge);
}

TEST(Router, LatencyBudgetKeepsItLocal) {
  RouterConfig c;
  c.threshold = 0.0;
  auto r = make_router(c);
  RouteInput in;
  in.latency_budget_ms = 150;  // cloud prior 400 ms, edge 40 ms
  const Decision d = decide(*r, "hello", in);
  EXPECT_EQ(d.plan.kind, PlanKind::kEdge);
  EXPECT_NE(std::find(d.rules_fired.begin(), d.rules_fired.end(), "latency-budget"),
            d.rules_fired.end());
}

TEST(Router, LearnedLatencyChangesTheBudgetDecision) {
  RouterConfig c;
  c.threshold = 0.0;
  auto r = make_router(c);
  for (int i = 0; i < 20; ++i) r->record_latency("cloud", 50, 500, 10);
  RouteInput in;
  in.latency_budget_ms = 150;
  EXPECT_EQ(decide(*r, "hello", in).plan.kind, PlanKind::kCloud);
}

TEST(Router, BusyEdgeQueueCountsAgainstTheBudget) {
  RouterConfig c;
  c.threshold = 1.0;  // complexity alone would keep everything on the edge
  auto r = make_router(c);
  for (int i = 0; i < 20; ++i) r->record_latency("cloud", 60, 300, 10);
  RouteInput in;
  in.latency_budget_ms = 150;
  in.max_tokens = 32;
  const Decision idle = decide(*r, "hello", in);
  EXPECT_EQ(idle.plan.kind, PlanKind::kEdge);
  // Five requests ahead on the edge engine: its first token comes after theirs.
  in.edge_queue_depth = 5;
  const Decision busy = decide(*r, "hello", in);
  EXPECT_GT(busy.signals.edge_ttft_ms, idle.signals.edge_ttft_ms + 150);
  EXPECT_EQ(busy.plan.kind, PlanKind::kCloud);
}

// A batching edge engine reports its measured load: with a free slot a
// request starts at the next step, so a busy edge still makes a budget a
// one-at-a-time queue would miss; with every slot taken it waits for
// running generations to end, and the cloud serves.
TEST(Router, BatchingEdgePredictsItsTtftFromItsMeasuredLoad) {
  RouterConfig c;
  c.threshold = 1.0;
  auto r = make_router(c);
  for (int i = 0; i < 20; ++i) r->record_latency("cloud", 60, 300, 10);
  RouteInput in;
  in.latency_budget_ms = 150;
  in.max_tokens = 32;
  in.edge_queue_depth = 3;
  in.edge_load = RouteInput::EdgeLoad{3, 0, 8, 0, 20.0, 1.0};
  const Decision free_slot = decide(*r, "hello", in);
  EXPECT_LT(free_slot.signals.edge_ttft_ms, 150);
  EXPECT_EQ(free_slot.plan.kind, PlanKind::kEdge);

  in.edge_queue_depth = 12;
  in.edge_load = RouteInput::EdgeLoad{8, 4, 8, 400, 20.0, 1.0};
  const Decision full = decide(*r, "hello", in);
  // Five requests must finish first (one round of 32 tokens at 20 ms a step).
  EXPECT_GT(full.signals.edge_ttft_ms, 32 * 20.0);
  EXPECT_EQ(full.plan.kind, PlanKind::kCloud);
}

TEST(Router, CostCeilingBlocksCloud) {
  RouterConfig c;
  c.threshold = 0.0;
  auto r = make_router(c);
  RouteInput in;
  in.cost_ceiling_usd = 1e-9;
  const Decision d = decide(*r, "hello", in);
  EXPECT_EQ(d.plan.kind, PlanKind::kEdge);
  EXPECT_FALSE(d.plan.cloud_allowed);
}

TEST(Router, MemoryPressureMovesToCloud) {
  RouterConfig c;
  c.threshold = 1.0;
  auto r = make_router(c);
  RouteInput in;
  in.memory_pressure = 2;
  EXPECT_EQ(decide(*r, "hello", in).plan.kind, PlanKind::kCloud);
  in.declared_class = DataClass::kDeviceOnly;
  EXPECT_EQ(decide(*r, "hello", in).plan.kind, PlanKind::kEdge);
}

TEST(Router, OptimizeTradesQualityAgainstCost) {
  RouterConfig cheap;
  cheap.default_policy = PolicyKind::kOptimize;
  cheap.optimize_cost_weight = 1e6;  // cost dominates
  cheap.optimize_latency_weight = 0;
  EXPECT_EQ(decide(*make_router(cheap), "hello").plan.kind, PlanKind::kEdge);
  RouterConfig quality = cheap;
  quality.optimize_cost_weight = 0;  // quality dominates: cloud 0.95 > edge 0.8
  EXPECT_EQ(decide(*make_router(quality), "hello").plan.kind, PlanKind::kCloud);
}

TEST(Router, ExplanationCarriesSignalsAndAlternativesButNoText) {
  auto r = make_router();
  const Decision d = decide(*r, "my ssn is 123-45-6789");
  nlohmann::json j;
  to_json(j, d);
  const std::string dump = j.dump();
  EXPECT_EQ(dump.find("123-45-6789"), std::string::npos) << dump;
  EXPECT_TRUE(j["signals"].contains("complexity"));
  EXPECT_TRUE(j["signals"].contains("sensitivity"));
  EXPECT_EQ(j["alternatives"].size(), 3u);
  EXPECT_FALSE(j["plan"]["reason"].get<std::string>().empty());
  EXPECT_TRUE(j["id"].get<std::string>().starts_with("dec-"));
}

TEST(Router, UnknownConfiguredTierIsAnError) {
  RouterConfig c;
  c.cloud_tier = "missing";
  auto r = Router::create(c, two_tiers());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("missing"), std::string::npos);
}

// The rules trust the edge to keep prefer-local data on the device: a
// cloud tier named as the edge is refused (a device tier in the cloud's role,
// a LAN server, is allowed).
TEST(Router, TheEdgeTierMustBeOnTheDevice) {
  RouterConfig c;
  c.edge_tier = "cloud";
  auto r = Router::create(c, two_tiers());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("routing.edge_tier"), std::string::npos) << r.error().message;
  RouterConfig lan;
  lan.cloud_tier = "edge";
  EXPECT_TRUE(Router::create(lan, two_tiers()).ok());
}

TEST(Router, DefaultComplexityModelLoads) {
  RouterConfig c;
  c.complexity_model = default_complexity_model_path();
  auto r = Router::create(c, two_tiers());
  if (!r.ok() && r.error().kind == ErrorKind::kNotFound) GTEST_SKIP() << r.error().message;
  ASSERT_TRUE(r.ok()) << r.error().message;
  ASSERT_NE((*r)->complexity(), nullptr);
  std::string_view hard =
      "Prove that every bounded monotone sequence of real numbers converges, "
      "then derive the limit of x_{n+1} = sqrt(2 + x_n) step by step.";
  std::string_view easy = "hi";
  RouteInput a, b;
  a.texts = std::span<const std::string_view>(&hard, 1);
  b.texts = std::span<const std::string_view>(&easy, 1);
  EXPECT_GT((*r)->decide(a).signals.complexity, (*r)->decide(b).signals.complexity);
}

}  // namespace
}  // namespace foreshore::route
