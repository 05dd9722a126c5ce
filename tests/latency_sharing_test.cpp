// Learned latencies pooled across replicas (hybrid/latency_sharing.h): in the
// router itself, and through the state backends, Redis being a real
// redis-server on a free loopback port.
#include "hybrid/latency_sharing.h"

#include <gtest/gtest.h>

#include "support/shared_servers.h"

namespace foreshore::route {
namespace {

using std::chrono::milliseconds;
using hybrid::LatencySharing;

std::unique_ptr<Router> make_router() {
  TierProfile edge;
  edge.name = "edge";
  edge.on_device = true;
  edge.max_data_class = DataClass::kDeviceOnly;
  edge.prior_ttft_ms = 40;
  TierProfile cloud;
  cloud.name = "cloud";
  cloud.prior_ttft_ms = 400;
  cloud.prior_ms_per_token = 20;
  RouterConfig config;
  config.complexity_model = "none";
  auto r = Router::create(std::move(config), {edge, cloud});
  EXPECT_TRUE(r.ok()) << r.error().message;
  return std::move(r).value();
}

// What the router predicts for the cloud tier's time to first token.
double cloud_ttft(const Router& r) {
  const std::string_view text = "hello";
  RouteInput in;
  in.texts = std::span<const std::string_view>(&text, 1);
  return r.decide(in).signals.cloud_ttft_ms;
}

std::unique_ptr<state::SharedState> make_state(const std::string& url = {}) {
  state::StateSettings s;
  s.backend = url.empty() ? "local" : "redis";
  s.url = url;
  s.retry_ms = 50;
  auto created = state::SharedState::create(s);
  EXPECT_TRUE(created.ok()) << created.error().message;
  return std::move(created).value();
}

TEST(LatencySharing, RouterPoolsPeersByTheMeasurementsBehindThem) {
  auto r = make_router();
  EXPECT_DOUBLE_EQ(cloud_ttft(*r), 400);  // the prior
  // Never measured here: the peers' figure replaces the prior.
  r->set_peer_latency("cloud", LatencySummary{900, 30, 4});
  EXPECT_DOUBLE_EQ(cloud_ttft(*r), 900);
  // Ten of its own (all its EWMA remembers) against the peers' four.
  for (int i = 0; i < 25; ++i) r->record_latency("cloud", 200, 200 + 9 * 10, 10);
  EXPECT_EQ(r->own_latency()[1].second.weight, 10);
  EXPECT_NEAR(cloud_ttft(*r), (200.0 * 10 + 900 * 4) / 14, 1e-9);
  // No peers: its own alone.
  r->set_peer_latency("cloud", LatencySummary{});
  EXPECT_NEAR(cloud_ttft(*r), 200, 1e-9);
}

// Two replicas in one process over the local backend: the same code path.
TEST(LatencySharing, ReplicasOnOneStateLearnFromEachOther) {
  auto state = make_state();
  auto a = make_router();
  auto b = make_router();
  LatencySharing share_a(*a, *state, milliseconds(0), "a");
  LatencySharing share_b(*b, *state, milliseconds(0), "b");
  for (int i = 0; i < 3; ++i) a->record_latency("cloud", 1200, 1200, 1);
  EXPECT_EQ(share_a.sync_once(), 0u);  // b has not published yet
  EXPECT_EQ(share_b.sync_once(), 1u);
  EXPECT_NEAR(cloud_ttft(*b), 1200, 1e-9);
  // a hears b, which measured nothing of the cloud: a's own figure stands.
  EXPECT_EQ(share_a.sync_once(), 1u);
  EXPECT_NEAR(cloud_ttft(*a), 1200, 1e-9);
}

TEST(LatencySharing, ThroughRedisAndAloneWhileItIsDown) {
  testing::RedisServer redis;
  if (!redis.available()) GTEST_SKIP() << redis.why();
  ASSERT_TRUE(redis.ok()) << redis.why();
  auto state_a = make_state(redis.url());
  auto state_b = make_state(redis.url());
  auto a = make_router();
  auto b = make_router();
  LatencySharing share_a(*a, *state_a, milliseconds(0), "replica-a");
  LatencySharing share_b(*b, *state_b, milliseconds(0), "replica-b");
  for (int i = 0; i < 10; ++i) a->record_latency("cloud", 900, 900, 1);
  share_a.sync_once();
  EXPECT_EQ(share_b.sync_once(), 1u);
  // b never sent to the cloud and predicts what a measured.
  EXPECT_NEAR(cloud_ttft(*b), 900, 1e-9);
  EXPECT_NE(redis.command({"HGET", "fsh:latency", "replica-a"}), "");
  for (int i = 0; i < 10; ++i) b->record_latency("cloud", 100, 100, 1);
  share_b.sync_once();
  EXPECT_NEAR(cloud_ttft(*b), 500, 1e-9);  // ten measurements each
  redis.kill();
  EXPECT_EQ(share_b.sync_once(), 0u);
  EXPECT_NEAR(cloud_ttft(*b), 100, 1e-9);  // its own alone
}

}  // namespace
}  // namespace foreshore::route
