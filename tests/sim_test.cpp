// The simulator and advisor: hand-computable traces, agreement with the live
// router, privacy under every policy, trace errors, and well-formed figures.
#include "sim/sim.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "hybrid/config.h"
#include "route/router.h"

namespace foreshore::sim {
namespace {

constexpr const char* kTiers =
    "tiers:\n"
    "  edge: {kind: embedded, placement: device, model: stories260K}\n"
    "  cloud:\n"
    "    kind: openai\n"
    "    placement: cloud\n"
    "    endpoint: http://127.0.0.1:9/v1\n"
    "    model: test-model\n"
    "    price: {input_per_mtok: 1.0, output_per_mtok: 2.0}\n";

config::GatewayConfig config_with(const std::string& routing) {
  auto c = config::parse_config(std::string(kTiers) + routing, "test.yaml");
  EXPECT_TRUE(c.ok()) << c.error().message;
  return std::move(c).value();
}

std::string default_model_routing() {
  return std::string("routing: {complexity_model: ") + FSH_SOURCE_DIR +
         "/data/router/complexity-default.json}\n";
}

// No jitter and round speeds, so every latency can be worked out by hand.
SimulationOptions exact_options() {
  SimulationOptions o;
  o.edge = TierLatencyModel{0.0, 10.0, 1000.0, 100.0, 0.0};
  o.cloud = TierLatencyModel{50.0, 100.0, 10000.0, 50.0, 0.0};
  o.escalation = EscalationModel{0.55, 1.0, 0.0};
  return o;
}

TraceRecord record(int32_t in, int32_t out, std::optional<route::DataClass> cls, double edge_q,
                   double cloud_q) {
  TraceRecord r;
  r.prompt_tokens = in;
  r.output_tokens = out;
  r.data_class = cls;
  r.edge_quality = edge_q;
  r.cloud_quality = cloud_q;
  return r;
}

// A: public, B: prefer-local, C: public, D: device-only. Cloud prices are
// $1 / $2 per million tokens, the edge is free.
std::vector<TraceRecord> four_requests() {
  using route::DataClass;
  return {record(1000, 500, DataClass::kPublic, 0.5, 0.9),
          record(2000, 1000, DataClass::kPreferLocal, 0.6, 0.8),
          record(500, 250, DataClass::kPublic, 0.7, 0.7),
          record(4000, 2000, DataClass::kDeviceOnly, 0.2, 1.0)};
}

std::unique_ptr<Simulator> simulator(const config::GatewayConfig& config, SimulationOptions o,
                                     std::vector<TraceRecord> trace) {
  auto s = Simulator::create(config, o, std::move(trace));
  EXPECT_TRUE(s.ok()) << s.error().message;
  return std::move(s).value();
}

TEST(Simulate, FourRequestsCostAndShareByHand) {
  auto sim = simulator(config_with("routing: {complexity_model: none}\n"), exact_options(),
                       four_requests());
  // Cloud-only would cost 0.002 + 0.004 + 0.001 + 0.008 = $0.015.
  const PolicyReport cloud = sim->run(route::PolicyKind::kCloud);
  EXPECT_NEAR(cloud.cloud_only_cost_usd, 0.015, 1e-12);
  // B (prefer-local) and D (device-only) stay on the edge: A + C reach the cloud.
  EXPECT_NEAR(cloud.cost_usd, 0.003, 1e-12);
  EXPECT_NEAR(cloud.saved_usd, 0.012, 1e-12);
  EXPECT_NEAR(cloud.saved_pct, 80.0, 1e-9);
  EXPECT_DOUBLE_EQ(cloud.cloud_share, 0.5);
  EXPECT_EQ(cloud.cloud_answers, 2);
  EXPECT_EQ(cloud.edge_answers, 2);
  EXPECT_EQ(cloud.privacy_violations, 0);
  ASSERT_TRUE(cloud.quality && cloud.cloud_only_quality);
  EXPECT_NEAR(*cloud.quality, (0.9 + 0.6 + 0.7 + 0.2) / 4, 1e-12);
  EXPECT_NEAR(*cloud.cloud_only_quality, (0.9 + 0.8 + 0.7 + 1.0) / 4, 1e-12);
  // Cloud TTFT = 50 + 100 + prompt/10 ms: A 250, C 200; edge = 10 + prompt ms: B 2010, D 4010.
  EXPECT_DOUBLE_EQ(cloud.ttft_ms.p50, 250.0);
  EXPECT_DOUBLE_EQ(cloud.ttft_ms.p99, 4010.0);
  EXPECT_DOUBLE_EQ(cloud.cloud_ttft_ms.p50, 200.0);
  // The table says why "cloud" saved money at all.
  const std::string table = format_policy_table(std::span<const PolicyReport>(&cloud, 1));
  EXPECT_NE(table.find("cloud: 2 of 4 requests stayed on the edge (1 prefer-local, 1 "
                       "device-only): their data class keeps them on the device by rule"),
            std::string::npos)
      << table;

  const PolicyReport edge = sim->run(route::PolicyKind::kEdge);
  EXPECT_DOUBLE_EQ(edge.cost_usd, 0.0);
  EXPECT_NEAR(edge.saved_pct, 100.0, 1e-9);
  EXPECT_DOUBLE_EQ(edge.cloud_share, 0.0);
  EXPECT_NEAR(*edge.quality, (0.5 + 0.6 + 0.7 + 0.2) / 4, 1e-12);
  // Edge TTFTs 1010, 2010, 510, 4010: nearest-rank p50 is the second smallest.
  EXPECT_DOUBLE_EQ(edge.ttft_ms.p50, 1010.0);

  // Cascade: only A's edge answer (0.5) is under the bar of 0.55, and it is
  // caught (recall 1); C is not escalated (no false alarms).
  const PolicyReport cascade = sim->run(route::PolicyKind::kCascade);
  EXPECT_EQ(cascade.escalations, 1);
  EXPECT_NEAR(cascade.cost_usd, 0.002, 1e-12);
  EXPECT_DOUBLE_EQ(cascade.cloud_share, 0.25);
  EXPECT_NEAR(*cascade.quality, (0.9 + 0.6 + 0.7 + 0.2) / 4, 1e-12);
  // A: edge prefill 1010 ms plus 7 held-back tokens at 100 tok/s, then the cloud's 250 ms.
  EXPECT_DOUBLE_EQ(cascade.escalated_ttft_ms.p50, 1010.0 + 70.0 + 250.0);
  EXPECT_EQ(cascade.privacy_violations, 0);
}

TEST(Simulate, EdgePriceAndHeldBackTokensAreCharged) {
  auto config = config_with("routing: {complexity_model: none}\n");
  config.tiers[0].price_input_per_mtok = 0.5;
  config.tiers[0].price_output_per_mtok = 1.0;
  std::vector<TraceRecord> one = {record(1000, 500, route::DataClass::kPublic, 0.1, 0.9)};
  auto sim = simulator(config, exact_options(), one);
  const PolicyReport cascade = sim->run(route::PolicyKind::kCascade);
  ASSERT_EQ(cascade.escalations, 1);
  // Edge prompt 1000 x $0.5 + 8 held-back tokens x $1, then the cloud's $0.002.
  EXPECT_NEAR(cascade.cost_usd, (1000 * 0.5 + 8 * 1.0) / 1e6 + 0.002, 1e-12);
}

// A shared edge runs one request at a time: the second of two close
// requests waits for the first, and the router, which sees the queue, sends
// a request with a tight budget to the cloud instead.
TEST(Simulate, SharedEdgeQueuesAndTheRouterSeesIt) {
  // Edge TTFT = 10 + 100 tokens / 1000 tok/s = 110 ms; 10 more tokens at
  // 100 tok/s: done at 210 ms.
  std::vector<TraceRecord> trace(3, record(100, 11, route::DataClass::kPublic, 0.5, 0.9));
  trace[1].arrival_s = 0.1;
  trace[2].arrival_s = 5.0;
  SimulationOptions o = exact_options();
  const auto config = config_with("routing: {complexity_model: none}\n");

  const PolicyReport apart = simulator(config, o, trace)->run(route::PolicyKind::kEdge);
  for (const RequestOutcome& r : apart.outcomes) EXPECT_DOUBLE_EQ(r.ttft_ms, 110.0);

  o.shared_edge = true;
  const PolicyReport shared = simulator(config, o, trace)->run(route::PolicyKind::kEdge);
  ASSERT_EQ(shared.outcomes.size(), 3u);
  EXPECT_DOUBLE_EQ(shared.outcomes[0].ttft_ms, 110.0);
  // The second arrives at 100 ms and starts when the first ends, at 210 ms.
  EXPECT_DOUBLE_EQ(shared.outcomes[1].edge_wait_ms, 110.0);
  EXPECT_DOUBLE_EQ(shared.outcomes[1].ttft_ms, 220.0);
  EXPECT_DOUBLE_EQ(shared.outcomes[1].total_ms, 320.0);
  // The third finds the edge free again.
  EXPECT_DOUBLE_EQ(shared.outcomes[2].ttft_ms, 110.0);
  EXPECT_DOUBLE_EQ(shared.edge_wait_ms.p99, 110.0);

  // With a 200 ms budget the queued request would miss it on the edge; the
  // cloud (TTFT 50 + 100 + 10 = 160 ms) makes it.
  for (TraceRecord& r : trace) r.latency_budget_ms = 200.0;
  const PolicyReport budgeted = simulator(config, o, trace)->run(route::PolicyKind::kEdge);
  EXPECT_FALSE(budgeted.outcomes[0].answered_by_cloud);
  EXPECT_TRUE(budgeted.outcomes[1].answered_by_cloud);
  EXPECT_DOUBLE_EQ(budgeted.outcomes[1].ttft_ms, 160.0);
  EXPECT_FALSE(budgeted.outcomes[2].answered_by_cloud);
  o.shared_edge = false;
  const PolicyReport budgeted_apart = simulator(config, o, trace)->run(route::PolicyKind::kEdge);
  EXPECT_EQ(budgeted_apart.cloud_answers, 0);
}

// A shared edge with several slots runs requests together (continuous
// batching): each gets speedup(n) / n of its speed alone while n run, and
// a request beyond the slots waits for one.
TEST(Simulate, BatchedSharedEdgeSharesItsSpeedAndQueuesBeyondItsSlots) {
  // Alone: TTFT 110 ms, done at 210 ms of work.
  std::vector<TraceRecord> trace(3, record(100, 11, route::DataClass::kPublic, 0.5, 0.9));
  trace[1].arrival_s = 0.1;
  trace[2].arrival_s = 0.15;
  SimulationOptions o = exact_options();
  o.shared_edge = true;
  o.edge_slots = 2;
  const auto config = config_with("routing: {complexity_model: none}\n");

  // No gain from batching: the second halves the first's speed from 100 ms.
  o.edge_batch_speedup = {1.0, 1.0};
  trace.pop_back();
  PolicyReport r = simulator(config, o, trace)->run(route::PolicyKind::kEdge);
  ASSERT_EQ(r.outcomes.size(), 2u);
  // First: 100 ms of work alone, its last 10 ms of TTFT at half speed.
  EXPECT_NEAR(r.outcomes[0].ttft_ms, 120.0, 1e-9);
  EXPECT_NEAR(r.outcomes[0].total_ms, 320.0, 1e-9);
  // Second: starts at once (a free slot), 110 ms of TTFT work at half speed
  // until the first ends at 320 ms, then its 100 ms of decoding alone.
  EXPECT_NEAR(r.outcomes[1].edge_wait_ms, 0.0, 1e-9);
  EXPECT_NEAR(r.outcomes[1].ttft_ms, 220.0, 1e-9);
  EXPECT_NEAR(r.outcomes[1].total_ms, 320.0, 1e-9);

  // Two at once run as fast as one: the first is untouched, and a third
  // arriving at 150 ms waits for the first to end at 210 ms.
  o.edge_batch_speedup = {1.0, 2.0};
  trace.push_back(trace[0]);
  trace[2].arrival_s = 0.15;
  r = simulator(config, o, trace)->run(route::PolicyKind::kEdge);
  ASSERT_EQ(r.outcomes.size(), 3u);
  EXPECT_NEAR(r.outcomes[0].ttft_ms, 110.0, 1e-9);
  EXPECT_NEAR(r.outcomes[0].total_ms, 210.0, 1e-9);
  EXPECT_NEAR(r.outcomes[1].ttft_ms, 110.0, 1e-9);
  EXPECT_NEAR(r.outcomes[2].edge_wait_ms, 60.0, 1e-9);
  EXPECT_NEAR(r.outcomes[2].ttft_ms, 170.0, 1e-9);
  EXPECT_NEAR(r.outcomes[2].total_ms, 270.0, 1e-9);

  // Beside one running request a 200 ms budget is still met on the edge (a
  // free slot), where one slot would have queued it behind the first and the
  // router would have sent it to the cloud.
  for (TraceRecord& t : trace) t.latency_budget_ms = 200.0;
  trace.pop_back();
  r = simulator(config, o, trace)->run(route::PolicyKind::kEdge);
  EXPECT_EQ(r.cloud_answers, 0);
  o.edge_slots = 1;
  r = simulator(config, o, trace)->run(route::PolicyKind::kEdge);
  EXPECT_TRUE(r.outcomes[1].answered_by_cloud);
}

TEST(Simulate, DecisionsEqualTheLiveRouter) {
  const config::GatewayConfig config = config_with(default_model_routing());
  TraceGeneratorOptions g;
  g.requests = 400;
  g.seed = 11;
  const std::vector<TraceRecord> trace = generate_trace(g);
  SimulationOptions options;
  auto sim = simulator(config, options, trace);

  auto live = route::Router::create(config.routing, tier_profiles(config, options, trace));
  ASSERT_TRUE(live.ok()) << live.error().message;

  for (auto policy :
       {route::PolicyKind::kThreshold, route::PolicyKind::kCascade, route::PolicyKind::kOptimize,
        route::PolicyKind::kCloud, route::PolicyKind::kConsistency}) {
    const PolicyReport rep = sim->run(policy);
    ASSERT_EQ(rep.outcomes.size(), trace.size());
    int64_t cloud_plans = 0;
    for (size_t i = 0; i < trace.size(); ++i) {
      // Built here from the record as the gateway builds it from a request.
      const std::string_view text = trace[i].prompt;
      route::RouteInput in;
      in.texts = {&text, 1};
      in.declared_class = trace[i].data_class;
      in.latency_budget_ms = trace[i].latency_budget_ms;
      in.policy = policy;
      in.max_tokens = trace[i].output_tokens;
      in.prompt_tokens = trace[i].prompt_tokens;
      const route::Decision d = (*live)->decide(in);
      const RequestOutcome& o = rep.outcomes[i];
      ASSERT_EQ(o.plan, d.plan.kind) << "request " << i << " under " << rep.label;
      EXPECT_EQ(o.data_class, d.signals.sensitivity.data_class);
      EXPECT_DOUBLE_EQ(o.complexity, d.signals.complexity);
      EXPECT_EQ(o.prompt_tokens, d.signals.prompt_tokens);
      EXPECT_DOUBLE_EQ(o.predicted_quality, d.plan.predicted_quality);
      cloud_plans += d.plan.kind != route::PlanKind::kEdge;
    }
    // Not a degenerate trace: every one of these policies plans cloud steps.
    EXPECT_GT(cloud_plans, 0) << rep.label;
  }
}

TEST(Simulate, DeviceOnlyNeverReachesTheCloudUnderAnyPolicy) {
  std::vector<TraceRecord> trace;
  for (int i = 0; i < 40; ++i) {
    TraceRecord r;
    r.output_tokens = 100 + i;
    if (i % 2 == 0) {
      r.prompt = "Prove that sqrt(2) is irrational, step by step, request " + std::to_string(i);
      r.data_class = route::DataClass::kDeviceOnly;
    } else {
      // Undeclared: the card number (valid Luhn) makes it device-only.
      r.prompt = "Was card 4111 1111 1111 1111 charged twice? Explain the dispute process.";
    }
    r.edge_quality = 0.1;  // the cascade would escalate every one of them if it could
    r.cloud_quality = 0.9;
    trace.push_back(r);
  }
  SimulationOptions options;
  options.escalation.recall = 1.0;
  auto sim = simulator(config_with(default_model_routing()), options, trace);
  std::vector<PolicyReport> reports = sim->sweep(5);
  for (auto p :
       {route::PolicyKind::kThreshold, route::PolicyKind::kCascade, route::PolicyKind::kConsistency,
        route::PolicyKind::kOptimize, route::PolicyKind::kEdge, route::PolicyKind::kCloud}) {
    reports.push_back(sim->run(p));
  }
  for (const auto& r : reports) {
    EXPECT_EQ(r.privacy_violations, 0) << r.label;
    EXPECT_EQ(r.cloud_calls, 0) << r.label;
    EXPECT_EQ(r.cost_usd, 0.0) << r.label;
    for (const auto& o : r.outcomes) EXPECT_EQ(o.data_class, route::DataClass::kDeviceOnly);
  }
}

// A trace whose prompts all score alike still sweeps to distinct points,
// each labelled with a threshold of its own.
TEST(Simulate, SweepPointsReadAsDistinctThresholds) {
  std::vector<TraceRecord> trace(20);
  for (auto& r : trace) {
    r.prompt = "hi";
    r.output_tokens = 10;
  }
  auto sim = simulator(config_with(default_model_routing()), {}, trace);
  const std::vector<PolicyReport> reports = sim->sweep(5);
  ASSERT_GE(reports.size(), 2u);
  for (size_t i = 1; i < reports.size(); ++i) {
    EXPECT_NE(reports[i].label, reports[i - 1].label);
  }
  EXPECT_EQ(reports.front().cloud_calls, 20);
  EXPECT_EQ(reports.back().cloud_calls, 0);
}

TEST(Trace, MalformedLineIsNamedWithItsNumber) {
  const std::string good = R"({"prompt": "hi", "output_tokens": 10})";
  auto bad_json = parse_trace(good + "\n\n" + good + "\n{\"prompt\": \"x\",\n", "t.jsonl");
  ASSERT_FALSE(bad_json.ok());
  EXPECT_NE(bad_json.error().message.find("t.jsonl:4"), std::string::npos)
      << bad_json.error().message;

  auto bad_field =
      parse_trace(good + "\n{\"prompt\": \"x\", \"output_tokens\": \"ten\"}\n", "t.jsonl");
  ASSERT_FALSE(bad_field.ok());
  EXPECT_NE(bad_field.error().message.find("t.jsonl:2"), std::string::npos);
  EXPECT_NE(bad_field.error().message.find("output_tokens"), std::string::npos);

  auto unknown = parse_trace("{\"prompt\": \"x\", \"output_token\": 3}", "t.jsonl");
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.error().message.find("t.jsonl:1: unknown field 'output_token'"),
            std::string::npos);

  auto no_prompt = parse_trace(good + "\n" + good + "\n{\"output_tokens\": 3}", "t.jsonl");
  ASSERT_FALSE(no_prompt.ok());
  EXPECT_NE(no_prompt.error().message.find("t.jsonl:3"), std::string::npos);

  auto score = parse_trace("{\"prompt\": \"x\", \"scores\": {\"edge\": 1.5}}", "t.jsonl");
  ASSERT_FALSE(score.ok());
  EXPECT_NE(score.error().message.find("scores.edge"), std::string::npos);

  auto half = parse_trace("{\"prompt\": \"x\", \"scores\": {\"edge\": 0.5}}", "t.jsonl");
  ASSERT_FALSE(half.ok());
  EXPECT_NE(half.error().message.find("both 'edge' and 'cloud'"), std::string::npos)
      << half.error().message;

  auto cls = parse_trace("{\"prompt\": \"x\", \"data_class\": \"secret\"}", "t.jsonl");
  ASSERT_FALSE(cls.ok());
  EXPECT_NE(cls.error().message.find("t.jsonl:1"), std::string::npos);
}

TEST(Trace, GeneratorIsSeededAndRoundTrips) {
  TraceGeneratorOptions g;
  g.requests = 2000;
  g.seed = 3;
  const auto a = generate_trace(g);
  const auto b = generate_trace(g);
  g.seed = 4;
  const auto c = generate_trace(g);
  ASSERT_EQ(a.size(), 2000u);
  std::string text_a, text_b, text_c;
  for (size_t i = 0; i < a.size(); ++i) {
    text_a += trace_record_to_json_line(a[i]) + "\n";
    text_b += trace_record_to_json_line(b[i]) + "\n";
    text_c += trace_record_to_json_line(c[i]) + "\n";
    if (i > 0) {
      EXPECT_GE(a[i].arrival_s, a[i - 1].arrival_s);
    }
  }
  EXPECT_EQ(text_a, text_b);
  EXPECT_NE(text_a, text_c);

  auto parsed = parse_trace(text_a, "generated");
  ASSERT_TRUE(parsed.ok()) << parsed.error().message;
  ASSERT_EQ(parsed->size(), a.size());
  std::string again;
  for (const auto& r : *parsed) again += trace_record_to_json_line(r) + "\n";
  EXPECT_EQ(again, text_a);

  // The mix is as documented: card numbers present and classed device-only
  // by the real scanner, the edge scoring below the cloud.
  auto sim = simulator(config_with(default_model_routing()), SimulationOptions{}, a);
  const PolicyReport edge = sim->run(route::PolicyKind::kEdge);
  int64_t cards = 0, card_device_only = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].prompt.find("card number") == std::string::npos) continue;
    ++cards;
    card_device_only += edge.outcomes[i].data_class == route::DataClass::kDeviceOnly;
  }
  EXPECT_GT(cards, 20);
  EXPECT_EQ(card_device_only, cards);
  ASSERT_TRUE(edge.quality && edge.cloud_only_quality);
  EXPECT_LT(*edge.quality, *edge.cloud_only_quality);
}

TEST(Trace, ArrivalsFollowTheDiurnalRate) {
  TraceGeneratorOptions g;
  g.requests = 3000;
  g.mean_rate_per_s = 0.03;  // about 1.2 days
  g.diurnal_amplitude = 0.6;
  const auto trace = generate_trace(g);
  int64_t first_day = 0, night = 0, afternoon = 0;
  for (const auto& r : trace) {
    if (r.arrival_s >= 86400) continue;
    ++first_day;
    const double hour = r.arrival_s / 3600;
    night += hour >= 0 && hour < 4;
    afternoon += hour >= 12 && hour < 16;
  }
  // Rate 0.03 x (1 + 0.6 cos(2 pi (t - 14 h) / 24 h)): 2592 a day on average;
  // 1 + 0.6 x 0.95 around 14:00 against 1 - 0.6 x 0.78 around 02:00.
  EXPECT_NEAR(static_cast<double>(first_day), 2592, 200);
  EXPECT_GT(afternoon, 2 * night);
}

// Checks that every tag is closed in order and every attribute is quoted:
// enough to catch what a hand-written generator gets wrong.
bool well_formed_xml(const std::string& text, std::string& why) {
  std::vector<std::string> open;
  size_t i = 0;
  while ((i = text.find('<', i)) != std::string::npos) {
    const size_t end = text.find('>', i);
    if (end == std::string::npos) {
      why = "unterminated tag at " + std::to_string(i);
      return false;
    }
    std::string tag = text.substr(i + 1, end - i - 1);
    i = end + 1;
    if (tag.empty()) {
      why = "empty tag";
      return false;
    }
    if (std::count(tag.begin(), tag.end(), '"') % 2 != 0) {
      why = "unbalanced quotes in <" + tag + ">";
      return false;
    }
    if (tag[0] == '/') {
      if (open.empty() || open.back() != tag.substr(1)) {
        why = "</" + tag.substr(1) + "> closes " + (open.empty() ? "nothing" : open.back());
        return false;
      }
      open.pop_back();
    } else if (tag.back() != '/') {
      open.push_back(tag.substr(0, tag.find_first_of(" \n")));
    }
  }
  if (!open.empty()) why = "<" + open.back() + "> never closed";
  return open.empty();
}

TEST(Report, FiguresAreWellFormedAndHoldTheSeries) {
  TraceGeneratorOptions g;
  g.requests = 300;
  auto sim =
      simulator(config_with(default_model_routing()), SimulationOptions{}, generate_trace(g));
  std::vector<PolicyReport> policies;
  for (auto p :
       {route::PolicyKind::kThreshold, route::PolicyKind::kCascade, route::PolicyKind::kCloud}) {
    policies.push_back(sim->run(p));
  }
  const std::vector<PolicyReport> sweep = sim->sweep(6);
  ASSERT_GE(sweep.size(), 3u);
  // The sweep runs from mostly cloud to all edge.
  EXPECT_GT(sweep.front().cloud_share, sweep.back().cloud_share);
  EXPECT_DOUBLE_EQ(sweep.back().cloud_share, 0.0);

  const std::string curve = cost_quality_svg(policies, sweep);
  const std::string latency = latency_svg(policies);
  const std::string traffic = traffic_svg(policies);
  for (const std::string* svg : {&curve, &latency, &traffic}) {
    std::string why;
    EXPECT_TRUE(well_formed_xml(*svg, why)) << why;
    EXPECT_EQ(svg->rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0), 0u);
  }
  for (const char* name : {"threshold sweep", "cascade", "cloud-only quality", "threshold"}) {
    EXPECT_NE(curve.find(name), std::string::npos) << name;
  }
  // One marker per sweep point and per policy, plus the legend's.
  size_t circles = 0;
  for (size_t at = 0; (at = curve.find("<circle", at)) != std::string::npos; ++at) ++circles;
  EXPECT_GE(circles, sweep.size() + policies.size());
  // Each path from the policy that uses it most.
  EXPECT_NE(latency.find("escalated (policy cascade"), std::string::npos);
  EXPECT_NE(latency.find("cloud (policy cloud"), std::string::npos);
  EXPECT_NE(latency.find("edge (policy threshold"), std::string::npos);
  for (const auto& p : policies) EXPECT_NE(traffic.find(">" + p.label + "<"), std::string::npos);

  const std::string dir = testing::TempDir() + "/sim-report";
  ReportInputs in;
  in.command = "foreshore simulate --trace t.jsonl";
  in.trace_path = "t.jsonl";
  in.trace = summarize_trace(*sim);
  in.policies = policies;
  in.sweep = sweep;
  ASSERT_TRUE(write_report(dir, in).ok());
  for (const char* f : {"report.md", "cost_quality.svg", "latency.svg", "traffic.svg"}) {
    EXPECT_TRUE(std::filesystem::exists(dir + "/" + f)) << f;
  }
  std::ifstream md(dir + "/report.md");
  std::stringstream text;
  text << md.rdbuf();
  EXPECT_NE(text.str().find("![cost and quality](cost_quality.svg)"), std::string::npos);
  EXPECT_NE(text.str().find("| cascade |"), std::string::npos);
}

std::vector<TraceRecord> steady_trace(bool tight, bool device_only) {
  std::vector<TraceRecord> trace;
  // Two hours, one request every 10 s of 500 + 500 tokens: 100 tokens/s throughout.
  for (int i = 0; i < 720; ++i) {
    TraceRecord r;
    r.arrival_s = 10.0 * i;
    r.prompt = "What is the capital of France?";
    r.prompt_tokens = 500;
    r.output_tokens = 500;
    if (tight && i % 2 == 0) r.latency_budget_ms = 120;
    if (device_only && i % 5 == 0) r.data_class = route::DataClass::kDeviceOnly;
    r.edge_quality = 0.9;
    r.cloud_quality = 0.92;
    trace.push_back(r);
  }
  return trace;
}

TEST(Advise, BreakEvenAndCriteriaFromTheNumbers) {
  const config::GatewayConfig config = config_with(default_model_routing());
  AdviceOptions o;
  o.api_usd_per_mtok = 1.0;
  o.gpu_tokens_per_s = 200;
  o.gpu_usd_per_hour = 0.18;  // $0.25 per Mtok at full use: breaks even at 25 %
  o.sweep_points = 5;
  auto sim = simulator(config, SimulationOptions{}, steady_trace(true, true));
  const Advice a = advise(*sim, o);
  ASSERT_EQ(a.criteria.size(), 4u);
  EXPECT_NEAR(a.break_even_utilization, 0.25, 1e-12);
  EXPECT_EQ(a.gpus_for_peak, 1);
  EXPECT_NEAR(a.sustained_utilization, 0.5, 0.01);
  for (const auto& c : a.criteria) EXPECT_TRUE(c.holds) << c.name << ": " << c.evidence;
  EXPECT_EQ(a.holding, 4);
  EXPECT_TRUE(a.hybrid_justified);
  EXPECT_NE(a.criteria[1].evidence.find("144 requests"), std::string::npos)
      << a.criteria[1].evidence;
  // One simple prompt throughout: every request scores the same, below the threshold.
  EXPECT_NE(a.criteria[3].evidence.find("100.0% of requests score below its threshold"),
            std::string::npos)
      << a.criteria[3].evidence;
  EXPECT_FALSE(a.start_policy.empty());
  for (const auto& c : a.candidates) EXPECT_EQ(c.privacy_violations, 0);

  // Four times the GPU price: break-even at 100 %, above what the trace sustains;
  // no tight budgets and no device-only data: only complexity holds.
  o.gpu_usd_per_hour = 0.72;
  auto plain = simulator(config, SimulationOptions{}, steady_trace(false, false));
  const Advice b = advise(*plain, o);
  EXPECT_NEAR(b.break_even_utilization, 1.0, 1e-12);
  EXPECT_FALSE(b.criteria[0].holds);
  EXPECT_FALSE(b.criteria[1].holds);
  EXPECT_FALSE(b.criteria[2].holds);
  EXPECT_TRUE(b.criteria[3].holds);
  EXPECT_FALSE(b.hybrid_justified);
  EXPECT_EQ(b.start_policy, "cloud");
}

TEST(Advise, SmallSampleComesWithAWarning) {
  auto sim = simulator(config_with("routing: {complexity_model: none}\n"), exact_options(),
                       four_requests());
  AdviceOptions o;
  o.sweep_points = 3;
  const Advice a = advise(*sim, o);
  EXPECT_NE(a.sample_warning.find("Only 4 requests: too few to trust"), std::string::npos)
      << a.sample_warning;
  EXPECT_TRUE(format_advice(a).starts_with("WARNING: Only 4 requests")) << format_advice(a);
  // A trace of the size asked for needs no warning.
  o.min_requests = 4;
  EXPECT_EQ(advise(*sim, o).sample_warning, "");
}

TEST(Advise, NoTimeSpanMeansVolumeUnknown) {
  std::vector<TraceRecord> trace = steady_trace(false, false);
  for (auto& r : trace) r.arrival_s = 0;
  auto sim = simulator(config_with(default_model_routing()), SimulationOptions{}, trace);
  AdviceOptions o;
  o.sweep_points = 3;
  const Advice a = advise(*sim, o);
  EXPECT_FALSE(a.criteria[2].holds);
  EXPECT_NE(a.criteria[2].evidence.find("no time span"), std::string::npos);
}

}  // namespace
}  // namespace foreshore::sim
