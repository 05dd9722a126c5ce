// The state backends (src/state): the local one, and Redis with a real
// redis-server started on a free loopback port.
#include "state/state.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "support/shared_servers.h"

using foreshore::state::parse_redis_url;
using foreshore::state::SharedState;
using foreshore::state::StateSettings;
using foreshore::testing::RedisServer;
using std::chrono::milliseconds;

namespace {

std::unique_ptr<SharedState> make(const std::string& backend, const std::string& url = {}) {
  StateSettings s;
  s.backend = backend;
  s.url = url;
  s.retry_ms = 50;
  auto state = SharedState::create(s);
  EXPECT_TRUE(state.ok()) << state.error().message;
  return state.ok() ? std::move(state).value() : nullptr;
}

// The contract both backends keep.
void check_counters_and_flags(SharedState& s) {
  EXPECT_TRUE(s.admit("c", 3, 5, milliseconds(0)).admitted);
  const auto over = s.admit("c", 3, 5, milliseconds(0));
  EXPECT_FALSE(over.admitted);
  EXPECT_EQ(over.value, 3);
  EXPECT_TRUE(s.admit("c", 2, 5, milliseconds(0)).admitted);
  // At the limit even a zero amount (a check) is refused.
  EXPECT_FALSE(s.admit("c", 0, 5, milliseconds(0)).admitted);
  s.add("c", -4, milliseconds(0));
  EXPECT_EQ(s.counter("c"), 1);
  EXPECT_TRUE(s.admit("unlimited", 1000, 0, milliseconds(0)).admitted);
  // Several counters: all or none.
  const auto refused = s.admit_all({{"x", 1, 10, milliseconds(0)}, {"y", 5, 3, milliseconds(0)}});
  EXPECT_FALSE(refused.admitted);
  EXPECT_EQ(refused.refused, 1u);
  EXPECT_EQ(s.counter("x"), 0);
  EXPECT_TRUE(s.admit_all({{"x", 1, 10, milliseconds(0)}, {"y", 3, 3, milliseconds(0)}}).admitted);
  EXPECT_EQ(s.counter("x"), 1);
  EXPECT_EQ(s.counter("y"), 3);
  s.add_all({{"x", -1, 0, milliseconds(0)}, {"y", 2, 0, milliseconds(0)}});
  EXPECT_EQ(s.counter("x"), 0);
  EXPECT_EQ(s.counter("y"), 5);

  EXPECT_FALSE(s.flag("f").has_value());
  s.set_flag("f", "one", milliseconds(60000), true);
  s.set_flag("f", "two", milliseconds(60000), true);  // kept: only if absent
  EXPECT_EQ(s.flag("f").value_or(""), "one");
  s.set_flag("short", "x", milliseconds(30), false);
  std::this_thread::sleep_for(milliseconds(80));
  EXPECT_FALSE(s.flag("short").has_value());
}

TEST(StateTest, LocalKeepsTheContract) {
  auto s = make("local");
  ASSERT_TRUE(s);
  EXPECT_EQ(s->backend(), "local");
  check_counters_and_flags(*s);
}

TEST(StateTest, RedisUrlsAreCheckedWithAReason) {
  auto a = parse_redis_url("redis://10.0.0.5:6380/2");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->host, "10.0.0.5");
  EXPECT_EQ(a->port, 6380);
  EXPECT_EQ(a->db, 2);
  EXPECT_EQ(parse_redis_url("localhost")->port, 6379);
  for (const char* bad : {"redis://:6379", "redis://h:99999", "redis://h:1/x", "redis://u:p@h:1"}) {
    auto r = parse_redis_url(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.error().message.find("redis://HOST:PORT"), std::string::npos) << r.error().message;
  }
  StateSettings s;
  s.backend = "memcached";
  EXPECT_FALSE(SharedState::create(s).ok());
  s.backend = "redis";
  EXPECT_FALSE(SharedState::create(s).ok());  // no url
}

TEST(StateTest, RedisKeepsTheContract) {
  RedisServer redis;
  if (!redis.available()) GTEST_SKIP() << redis.why();
  ASSERT_TRUE(redis.ok()) << redis.why();
  auto s = make("redis", redis.url());
  ASSERT_TRUE(s);
  EXPECT_TRUE(s->connected());
  check_counters_and_flags(*s);
  EXPECT_EQ(redis.command({"GET", "fsh:c"}), "1");
}

// Two processes' worth of clients on one counter: the limit holds exactly.
TEST(StateTest, RedisAdmissionIsAtomicAcrossClients) {
  RedisServer redis;
  if (!redis.available()) GTEST_SKIP() << redis.why();
  ASSERT_TRUE(redis.ok()) << redis.why();
  auto a = make("redis", redis.url());
  auto b = make("redis", redis.url());
  ASSERT_TRUE(a && b);
  std::atomic<int> admitted{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    SharedState* s = t % 2 ? a.get() : b.get();
    threads.emplace_back([&, s] {
      for (int i = 0; i < 50; ++i)
        admitted += s->admit("budget", 7, 1000, milliseconds(0)).admitted;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(admitted.load(), 1000 / 7);
  EXPECT_EQ(a->counter("budget"), (1000 / 7) * 7);
}

TEST(StateTest, RedisDownAnswersLocallyAndResyncsWhatChanged) {
  auto redis = std::make_unique<RedisServer>();
  if (!redis->available()) GTEST_SKIP() << redis->why();
  ASSERT_TRUE(redis->ok()) << redis->why();
  const int port = redis->port();
  auto s = make("redis", redis->url());
  ASSERT_TRUE(s);
  EXPECT_TRUE(s->admit("spend", 10, 100, milliseconds(0)).admitted);
  redis->kill();
  // Starts from the last value seen, 10: 90 more fit, 91 do not.
  const auto down = s->admit("spend", 91, 100, milliseconds(0));
  EXPECT_FALSE(down.admitted);
  EXPECT_TRUE(down.answered_locally);
  EXPECT_FALSE(s->connected());
  EXPECT_TRUE(s->admit("spend", 5, 100, milliseconds(0)).admitted);
  s->set_flag("pin:x", "cloud", milliseconds(60000), false);
  EXPECT_GT(s->local_fallbacks(), 0u);
  redis = std::make_unique<RedisServer>(port);
  ASSERT_TRUE(redis->ok()) << redis->why();
  for (int i = 0; i < 200 && !s->connected(); ++i) std::this_thread::sleep_for(milliseconds(20));
  ASSERT_TRUE(s->connected());
  // The new server holds what changed while the old one was gone, once.
  EXPECT_EQ(redis->command({"GET", "fsh:spend"}), "5");
  EXPECT_EQ(redis->command({"GET", "fsh:pin:x"}), "cloud");
}

}  // namespace
