// The state backends (src/state): the local one, and Redis with a real
// redis-server started on a free loopback port.
#include "state/state.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
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

  // A group's members: each its own, the last write wins, gone after the ttl.
  s.put_member("g", "one", "1", milliseconds(60000));
  s.put_member("g", "two", "2", milliseconds(30));
  s.put_member("g", "one", "1b", milliseconds(60000));
  EXPECT_EQ(s.members("g").value_or(std::map<std::string, std::string>{}).size(), 2u);
  EXPECT_EQ(s.members("empty").value_or(std::map<std::string, std::string>{{"x", "y"}}).size(), 0u);

  std::this_thread::sleep_for(milliseconds(80));
  EXPECT_FALSE(s.flag("short").has_value());
  const auto live = s.members("g");
  ASSERT_TRUE(live.has_value());
  EXPECT_EQ(*live, (std::map<std::string, std::string>{{"one", "1b"}}));
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
  auto with_password = parse_redis_url("redis://:s%40cret@h:1/3");
  ASSERT_TRUE(with_password.ok()) << with_password.error().message;
  EXPECT_EQ(with_password->username, "");
  EXPECT_EQ(with_password->password, "s@cret");
  EXPECT_EQ(with_password->db, 3);
  auto with_user = parse_redis_url("redis://gateway:pw@h:1");
  ASSERT_TRUE(with_user.ok());
  EXPECT_EQ(with_user->username, "gateway");
  EXPECT_EQ(with_user->password, "pw");
  for (const char* bad : {"redis://:6379", "redis://h:99999", "redis://h:1/x",
                          "redis://nocolon@h:1", "redis://u:@h:1", "redis://:bad%4@h:1"}) {
    auto r = parse_redis_url(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_NE(r.error().message.find("redis://HOST:PORT"), std::string::npos) << r.error().message;
  }
  // The password is never shown back.
  EXPECT_EQ(parse_redis_url("redis://:topsecret@h:x").error().message.find("topsecret"),
            std::string::npos);
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

namespace {

// AUTH with the password in the URL (percent-encoded) or in an environment
// variable, or as an ACL user; a missing or wrong one is an error at start,
// and one that stops working later shows in last_error().
TEST(StateTest, RedisWithAPasswordAuthenticatesEveryConnection) {
  const std::string password = "pa ss@word";
  auto redis = std::make_unique<RedisServer>(0, password);
  if (!redis->available()) GTEST_SKIP() << redis->why();
  ASSERT_TRUE(redis->ok()) << redis->why();
  const std::string at = "127.0.0.1:" + std::to_string(redis->port());
  auto create = [&](const std::string& url, const std::string& password_env = {}) {
    StateSettings s;
    s.backend = "redis";
    s.url = url;
    s.password_env = password_env;
    s.retry_ms = 50;
    return SharedState::create(s);
  };

  auto in_url = create("redis://:pa%20ss%40word@" + at);
  ASSERT_TRUE(in_url.ok()) << in_url.error().message;
  EXPECT_TRUE((*in_url)->connected());
  // More connections than one: every one of them authenticates.
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20; ++i) (*in_url)->admit("authed", 1, 0, milliseconds(0));
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ((*in_url)->counter("authed"), 80);
  EXPECT_EQ((*in_url)->local_fallbacks(), 0u);

  ::setenv("FSH_TEST_REDIS_PASSWORD", password.c_str(), 1);
  auto from_env = create("redis://" + at, "FSH_TEST_REDIS_PASSWORD");
  ASSERT_TRUE(from_env.ok()) << from_env.error().message;
  EXPECT_EQ((*from_env)->counter("authed"), 80);

  redis->command({"ACL", "SETUSER", "gateway", "on", ">gateway-pw", "~*", "+@all"});
  auto user = create("redis://gateway:gateway-pw@" + at);
  ASSERT_TRUE(user.ok()) << user.error().message;
  EXPECT_EQ((*user)->counter("authed"), 80);

  ::setenv("FSH_TEST_REDIS_PASSWORD", "wrong-password", 1);
  auto wrong = create("redis://" + at, "FSH_TEST_REDIS_PASSWORD");
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.error().message.find("refused the password"), std::string::npos)
      << wrong.error().message;
  EXPECT_EQ(wrong.error().message.find("wrong-password"), std::string::npos);
  auto none = create("redis://" + at);
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.error().message.find("wants a password"), std::string::npos)
      << none.error().message;
  auto unset = create("redis://" + at, "FSH_TEST_NO_SUCH_VARIABLE");
  ASSERT_FALSE(unset.ok());
  EXPECT_NE(unset.error().message.find("FSH_TEST_NO_SUCH_VARIABLE"), std::string::npos);
  EXPECT_FALSE(create("redis://:pw@" + at, "FSH_TEST_REDIS_PASSWORD").ok());  // both
  ::unsetenv("FSH_TEST_REDIS_PASSWORD");

  // Back with another password: the replica stays on its own state and says why.
  const int port = redis->port();
  redis->kill();
  (*in_url)->admit("authed", 1, 0, milliseconds(0));
  EXPECT_FALSE((*in_url)->connected());
  redis = std::make_unique<RedisServer>(port, "rotated");
  ASSERT_TRUE(redis->ok()) << redis->why();
  std::string why;
  for (int i = 0; i < 200 && why.find("refused") == std::string::npos; ++i) {
    std::this_thread::sleep_for(milliseconds(20));
    why = (*in_url)->last_error();
  }
  EXPECT_NE(why.find("refused the password"), std::string::npos) << why;
  EXPECT_FALSE((*in_url)->connected());
}

}  // namespace
