#include "state/state.h"

#include <hiredis/hiredis.h>

#include <charconv>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

namespace foreshore::state {
namespace {

using Clock = std::chrono::steady_clock;

// This process's copy of the shared state: the whole state for `local`, and
// for `redis` the last values seen from Redis plus what changed while it was
// down.
class LocalState final : public SharedState {
 public:
  BatchAdmission admit_all(const std::vector<CounterChange>& changes) override {
    std::lock_guard lock(mu_);
    BatchAdmission a;
    for (size_t i = 0; i < changes.size(); ++i) {
      const CounterChange& c = changes[i];
      const Entry& e = live(c.key);
      if (c.limit > 0 && e.count + std::max<int64_t>(c.amount, 1) > c.limit) {
        a.refused = i;
        a.refused_value = e.count;
        return a;
      }
    }
    for (const CounterChange& c : changes) {
      Entry& e = live(c.key);
      e.count += c.amount;
      touch(e, c.ttl);
    }
    a.admitted = true;
    return a;
  }

  void add_all(const std::vector<CounterChange>& changes) override {
    std::lock_guard lock(mu_);
    for (const CounterChange& c : changes) {
      Entry& e = live(c.key);
      e.count += c.amount;
      touch(e, c.ttl);
    }
  }

  int64_t counter(const std::string& key) override {
    std::lock_guard lock(mu_);
    return live(key).count;
  }

  void set_flag(const std::string& key, const std::string& value, std::chrono::milliseconds ttl,
                bool only_if_absent) override {
    std::lock_guard lock(mu_);
    Entry& e = live(key);
    if (only_if_absent && e.text) return;
    e.text = value;
    e.expires = Clock::now() + ttl;
  }

  std::optional<std::string> flag(const std::string& key) override {
    std::lock_guard lock(mu_);
    return live(key).text;
  }

  Status put_record(const std::string& key, const std::string& value) override {
    std::lock_guard lock(mu_);
    records_[key] = value;
    return Status::Ok();
  }
  Status remove_record(const std::string& key) override {
    std::lock_guard lock(mu_);
    records_.erase(key);
    return Status::Ok();
  }
  std::optional<std::string> record(const std::string& key) override {
    std::lock_guard lock(mu_);
    auto it = records_.find(key);
    if (it == records_.end()) return std::nullopt;
    return it->second;
  }
  void put_member(const std::string& group, const std::string& member, const std::string& value,
                  std::chrono::milliseconds ttl) override {
    std::lock_guard lock(mu_);
    groups_[group][member] = {value, Clock::now() + ttl};
  }
  std::optional<std::map<std::string, std::string>> members(const std::string& group) override {
    std::lock_guard lock(mu_);
    std::map<std::string, std::string> out;
    auto it = groups_.find(group);
    if (it == groups_.end()) return out;
    const auto now = Clock::now();
    std::erase_if(it->second, [&](const auto& kv) { return kv.second.second <= now; });
    for (const auto& [member, entry] : it->second) out.emplace(member, entry.first);
    return out;
  }

  // What Redis holds for a record (nullopt: none), for reads while it is down.
  void mirror_record(const std::string& key, const std::optional<std::string>& value) {
    std::lock_guard lock(mu_);
    if (value) {
      records_[key] = *value;
    } else {
      records_.erase(key);
    }
  }

  // What Redis said a counter is, so that an outage starts from it.
  void mirror(const std::string& key, int64_t value, std::chrono::milliseconds ttl) {
    std::lock_guard lock(mu_);
    Entry& e = live(key);
    e.count = value;
    touch(e, ttl);
  }

  std::string_view backend() const override { return "local"; }
  bool connected() const override { return true; }
  uint64_t local_fallbacks() const override { return 0; }
  std::string last_error() const override { return {}; }

 private:
  struct Entry {
    int64_t count = 0;
    std::optional<std::string> text;
    Clock::time_point expires = Clock::time_point::max();
  };

  static void touch(Entry& e, std::chrono::milliseconds ttl) {
    e.expires = ttl.count() > 0 ? Clock::now() + ttl : Clock::time_point::max();
  }

  // The entry for `key`, reset when it has expired. Expired entries are swept
  // now and then so that per-minute windows do not pile up.
  Entry& live(const std::string& key) {
    const auto now = Clock::now();
    if (++ops_ % 4096 == 0)
      std::erase_if(entries_, [&](const auto& kv) { return kv.second.expires <= now; });
    Entry& e = entries_[key];
    if (e.expires <= now) e = Entry{};
    return e;
  }

  std::mutex mu_;
  std::unordered_map<std::string, Entry> entries_;
  std::unordered_map<std::string, std::string> records_;
  // group -> member -> {value, expiry}
  std::unordered_map<std::string, std::map<std::string, std::pair<std::string, Clock::time_point>>>
      groups_;
  uint64_t ops_ = 0;
};

// For each KEYS[i], ARGV[3i-2] is the amount, ARGV[3i-1] the limit (0: none)
// and ARGV[3i] the expiry in ms (0: none). When no amount would pass its
// limit, adds them all; returns {admitted, refused index (1-based, 0 when
// admitted), that counter's value, every counter's value after}. One script,
// so the checks and the changes are one step for every replica.
constexpr const char* kAdmitScript = R"lua(
local values = {}
for i = 1, #KEYS do
  local v = tonumber(redis.call('GET', KEYS[i]) or '0')
  local amount = tonumber(ARGV[3 * i - 2])
  local limit = tonumber(ARGV[3 * i - 1])
  if limit > 0 and v + math.max(amount, 1) > limit then
    local out = {0, i, v}
    for j = 1, #KEYS do out[3 + j] = tonumber(redis.call('GET', KEYS[j]) or '0') end
    return out
  end
end
local out = {1, 0, 0}
for i = 1, #KEYS do
  local amount = tonumber(ARGV[3 * i - 2])
  if amount ~= 0 then
    out[3 + i] = redis.call('INCRBY', KEYS[i], amount)
  else
    out[3 + i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  end
  local ttl = tonumber(ARGV[3 * i])
  if ttl > 0 and amount ~= 0 then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return out
)lua";

// A group's member as a field of one hash, its value prefixed with its expiry
// by Redis's own clock (the replicas' clocks may disagree): ARGV[1] member,
// ARGV[2] value, ARGV[3] ttl in ms. Redis 7.0 has no expiry per hash field.
constexpr const char* kPutMemberScript = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], (now + tonumber(ARGV[3])) .. '|' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
)lua";

// The group's live members as {member, value, ...}; expired ones are removed.
constexpr const char* kMembersScript = R"lua(
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local text = all[i + 1]
  local bar = string.find(text, '|', 1, true)
  local expires = bar and tonumber(string.sub(text, 1, bar - 1)) or 0
  if expires > now then
    out[#out + 1] = all[i]
    out[#out + 1] = string.sub(text, bar + 1)
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out
)lua";

struct ContextFree {
  void operator()(redisContext* c) const { redisFree(c); }
};
using Context = std::unique_ptr<redisContext, ContextFree>;

struct ReplyFree {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyFree>;

class RedisState final : public SharedState {
 public:
  RedisState(StateSettings settings, RedisAddress address)
      : settings_(std::move(settings)), address_(std::move(address)) {
    prefix_ = "fsh:";
    if (Context c = connect()) {
      release(std::move(c), 0);
    } else {
      connected_ = false;
      // Refused credentials are create()'s error to return, not an outage.
      if (!refused_credentials()) {
        std::fprintf(stderr,
                     "state: %s; this replica runs on its own state and retries every %d ms\n",
                     last_error().c_str(), settings_.retry_ms);
      }
    }
    reconnector_ = std::thread([this] { reconnect_loop(); });
  }

  ~RedisState() override {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    reconnector_.join();
  }

  BatchAdmission admit_all(const std::vector<CounterChange>& changes) override {
    if (changes.empty()) return BatchAdmission{true, 0, 0, false};
    if (connected_) {
      if (Reply r = command(script_args(changes, true));
          r && r->type == REDIS_REPLY_ARRAY && r->elements == 3 + changes.size()) {
        BatchAdmission a;
        a.admitted = r->element[0]->integer == 1;
        a.refused = static_cast<size_t>(std::max<long long>(r->element[1]->integer, 1) - 1);
        a.refused_value = r->element[2]->integer;
        for (size_t i = 0; i < changes.size(); ++i) {
          local_.mirror(changes[i].key, r->element[3 + i]->integer, changes[i].ttl);
        }
        return a;
      }
    }
    BatchAdmission a = local_.admit_all(changes);
    a.answered_locally = true;
    if (a.admitted) pend_counts(changes);
    fallbacks_.fetch_add(1, std::memory_order_relaxed);
    return a;
  }

  void add_all(const std::vector<CounterChange>& changes) override {
    if (changes.empty()) return;
    if (connected_) {
      if (Reply r = command(script_args(changes, false));
          r && r->type == REDIS_REPLY_ARRAY && r->elements == 3 + changes.size()) {
        for (size_t i = 0; i < changes.size(); ++i) {
          local_.mirror(changes[i].key, r->element[3 + i]->integer, changes[i].ttl);
        }
        return;
      }
    }
    local_.add_all(changes);
    pend_counts(changes);
    fallbacks_.fetch_add(1, std::memory_order_relaxed);
  }

  int64_t counter(const std::string& key) override {
    if (connected_) {
      Reply r = command({"GET", prefix_ + key});
      if (r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_NIL)) {
        int64_t v = 0;
        if (r->type == REDIS_REPLY_STRING) std::from_chars(r->str, r->str + r->len, v);
        return v;
      }
    }
    fallbacks_.fetch_add(1, std::memory_order_relaxed);
    return local_.counter(key);
  }

  void set_flag(const std::string& key, const std::string& value, std::chrono::milliseconds ttl,
                bool only_if_absent) override {
    if (connected_) {
      std::vector<std::string> args = {"SET", prefix_ + key, value, "PX",
                                       std::to_string(std::max<int64_t>(ttl.count(), 1))};
      if (only_if_absent) args.emplace_back("NX");
      if (Reply r = command(args); r && r->type != REDIS_REPLY_ERROR) {
        local_.set_flag(key, value, ttl, only_if_absent);
        return;
      }
    }
    local_.set_flag(key, value, ttl, only_if_absent);
    {
      std::lock_guard lock(mu_);
      pending_flags_[key] = PendingFlag{value, Clock::now() + ttl, only_if_absent};
    }
    fallbacks_.fetch_add(1, std::memory_order_relaxed);
  }

  std::optional<std::string> flag(const std::string& key) override {
    if (connected_) {
      Reply r = command({"GET", prefix_ + key});
      if (r && r->type == REDIS_REPLY_STRING) return std::string(r->str, r->len);
      if (r && r->type == REDIS_REPLY_NIL) return std::nullopt;
    }
    fallbacks_.fetch_add(1, std::memory_order_relaxed);
    return local_.flag(key);
  }

  Status put_record(const std::string& key, const std::string& value) override {
    if (Reply r = command({"SET", prefix_ + key, value}); r && r->type != REDIS_REPLY_ERROR) {
      local_.mirror_record(key, value);
      return Status::Ok();
    }
    return down_error("store " + key);
  }

  Status remove_record(const std::string& key) override {
    if (Reply r = command({"DEL", prefix_ + key}); r && r->type == REDIS_REPLY_INTEGER) {
      local_.mirror_record(key, std::nullopt);
      return Status::Ok();
    }
    return down_error("remove " + key);
  }

  std::optional<std::string> record(const std::string& key) override {
    if (connected_) {
      Reply r = command({"GET", prefix_ + key});
      if (r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_NIL)) {
        std::optional<std::string> value;
        if (r->type == REDIS_REPLY_STRING) value.emplace(r->str, r->len);
        local_.mirror_record(key, value);
        return value;
      }
    }
    fallbacks_.fetch_add(1, std::memory_order_relaxed);
    return local_.record(key);
  }

  void put_member(const std::string& group, const std::string& member, const std::string& value,
                  std::chrono::milliseconds ttl) override {
    if (!connected_) return;
    command({"EVAL", kPutMemberScript, "1", prefix_ + group, member, value,
             std::to_string(std::max<int64_t>(ttl.count(), 1))});
  }

  std::optional<std::map<std::string, std::string>> members(const std::string& group) override {
    if (!connected_) return std::nullopt;
    Reply r = command({"EVAL", kMembersScript, "1", prefix_ + group});
    if (!r || r->type != REDIS_REPLY_ARRAY) return std::nullopt;
    std::map<std::string, std::string> out;
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
      const redisReply* k = r->element[i];
      const redisReply* v = r->element[i + 1];
      if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING) continue;
      out.emplace(std::string(k->str, k->len), std::string(v->str, v->len));
    }
    return out;
  }

  std::string_view backend() const override { return "redis"; }
  bool connected() const override { return connected_; }
  uint64_t local_fallbacks() const override { return fallbacks_.load(std::memory_order_relaxed); }
  std::string last_error() const override {
    std::lock_guard lock(error_mu_);
    return connected_ ? std::string() : last_error_;
  }
  // Redis answered but refused this replica's credentials at the last try.
  bool refused_credentials() const {
    std::lock_guard lock(error_mu_);
    return refused_credentials_;
  }

 private:
  struct PendingCount {
    int64_t amount = 0;
    std::chrono::milliseconds ttl{0};
  };
  struct PendingFlag {
    std::string value;
    Clock::time_point expires;
    bool only_if_absent = false;
  };

  // A new connection, authenticated (AUTH, when a password is set) and
  // checked with one command, so that a Redis that wants a password it was
  // not given is found here and not by the first request; null, with the
  // reason in last_error(), when it cannot be had.
  Context connect() const {
    const std::string where = "Redis at " + address_.host + ":" + std::to_string(address_.port);
    const auto fail = [&](const std::string& why, bool credentials) -> Context {
      std::lock_guard lock(error_mu_);
      last_error_ = why;
      refused_credentials_ = credentials;
      return nullptr;
    };
    const timeval tv{settings_.timeout_ms / 1000, (settings_.timeout_ms % 1000) * 1000};
    Context c(redisConnectWithTimeout(address_.host.c_str(), address_.port, tv));
    if (!c || c->err) {
      return fail(where + " does not answer (" + (c ? c->errstr : "out of memory") + ")", false);
    }
    if (redisSetTimeout(c.get(), tv) != REDIS_OK)
      return fail(where + ": cannot set timeouts", false);
    Reply r;
    if (!address_.password.empty()) {
      std::vector<const char*> argv = {"AUTH"};
      std::vector<size_t> lens = {4};
      if (!address_.username.empty()) {
        argv.push_back(address_.username.data());
        lens.push_back(address_.username.size());
      }
      argv.push_back(address_.password.data());
      lens.push_back(address_.password.size());
      r.reset(static_cast<redisReply*>(
          redisCommandArgv(c.get(), static_cast<int>(argv.size()), argv.data(), lens.data())));
    } else {
      r.reset(static_cast<redisReply*>(redisCommand(c.get(), "PING")));
    }
    if (!r || c->err) return fail(where + " dropped the connection (" + c->errstr + ")", false);
    if (r->type == REDIS_REPLY_ERROR) {
      const std::string said(r->str, r->len);
      if (address_.password.empty()) {
        return fail(where + " wants a password (" + said +
                        "); set state.password_env to the variable that holds it",
                    true);
      }
      return fail(
          where + " refused the " +
              (address_.username.empty() ? std::string("password")
                                         : "user '" + address_.username + "' and password") +
              " (" + said + "); check state.password_env (or the password in state.url)",
          true);
    }
    if (address_.db != 0) {
      r.reset(static_cast<redisReply*>(redisCommand(c.get(), "SELECT %d", address_.db)));
      if (!r || r->type == REDIS_REPLY_ERROR) {
        return fail(where + " has no database " + std::to_string(address_.db) +
                        "; check the /DB of state.url",
                    false);
      }
    }
    return c;
  }

  // A pooled connection; null when none can be had (Redis down). `generation`
  // says which connection era it belongs to.
  Context acquire(uint64_t& generation) {
    {
      std::lock_guard lock(mu_);
      generation = generation_;
      if (!idle_.empty()) {
        Context c = std::move(idle_.back());
        idle_.pop_back();
        return c;
      }
    }
    return connect();
  }

  // Back to the pool, unless Redis failed since it was taken: a connection
  // from before an outage may be dead, and would mark Redis down again.
  void release(Context c, uint64_t generation) {
    std::lock_guard lock(mu_);
    if (generation == generation_ && static_cast<int32_t>(idle_.size()) < settings_.pool_size) {
      idle_.push_back(std::move(c));
    }
  }

  // Runs one command; on a connection failure marks Redis down (the
  // reconnector takes over) and returns null.
  Reply command(const std::vector<std::string>& args) {
    uint64_t generation = 0;
    Context c = acquire(generation);
    if (c) {
      std::vector<const char*> argv;
      std::vector<size_t> lens;
      for (const auto& a : args) {
        argv.push_back(a.data());
        lens.push_back(a.size());
      }
      Reply r(static_cast<redisReply*>(
          redisCommandArgv(c.get(), static_cast<int>(argv.size()), argv.data(), lens.data())));
      if (r && c->err == 0) {
        release(std::move(c), generation);
        return r;
      }
    }
    mark_down(c ? c->errstr : "cannot connect");
    return nullptr;
  }

  void mark_down(const char* why) {
    bool was = true;
    if (connected_.compare_exchange_strong(was, false)) {
      {
        std::lock_guard lock(error_mu_);
        last_error_ = "Redis at " + address_.host + ":" + std::to_string(address_.port) +
                      " failed (" + why + ")";
      }
      std::fprintf(stderr,
                   "state: Redis at %s:%d failed (%s); this replica goes on with its own state "
                   "and resyncs when Redis is back\n",
                   address_.host.c_str(), address_.port, why);
      {
        std::lock_guard lock(mu_);
        idle_.clear();
        ++generation_;
      }
      cv_.notify_all();
    }
  }

  Error down_error(const std::string& what) const {
    return make_error(ErrorKind::kUnavailable,
                      "cannot " + what + ": Redis at " + address_.host + ":" +
                          std::to_string(address_.port) +
                          " does not answer; retry when it is back (state.url)");
  }

  std::vector<std::string> script_args(const std::vector<CounterChange>& changes,
                                       bool with_limits) const {
    std::vector<std::string> args = {"EVAL", kAdmitScript, std::to_string(changes.size())};
    for (const auto& c : changes) args.push_back(prefix_ + c.key);
    for (const auto& c : changes) {
      args.push_back(std::to_string(c.amount));
      args.push_back(with_limits ? std::to_string(c.limit) : "0");
      args.push_back(std::to_string(c.ttl.count()));
    }
    return args;
  }

  void pend_counts(const std::vector<CounterChange>& changes) {
    std::lock_guard lock(mu_);
    for (const auto& c : changes) {
      PendingCount& p = pending_counts_[c.key];
      p.amount += c.amount;
      p.ttl = c.ttl;
    }
  }

  // While down: tries Redis every retry_ms; once it answers, pushes what this
  // replica changed meanwhile and only then takes Redis as the truth again.
  void reconnect_loop() {
    std::unique_lock lock(mu_);
    while (!stopping_) {
      if (connected_) {
        cv_.wait(lock, [&] { return stopping_ || !connected_; });
        continue;
      }
      cv_.wait_for(lock, std::chrono::milliseconds(settings_.retry_ms), [&] { return stopping_; });
      if (stopping_) break;
      lock.unlock();
      const bool back = resync();
      lock.lock();
      if (back) {
        {
          std::lock_guard error_lock(error_mu_);
          refused_credentials_ = false;
        }
        connected_ = true;
        std::fprintf(stderr, "state: Redis at %s:%d is back; shared state resynced\n",
                     address_.host.c_str(), address_.port);
      }
    }
  }

  // Pushes pending changes until none are left; false when Redis failed again.
  bool resync() {
    Context c = connect();
    if (!c) return false;
    for (;;) {
      std::unordered_map<std::string, PendingCount> counts;
      std::unordered_map<std::string, PendingFlag> flags;
      {
        std::lock_guard lock(mu_);
        if (pending_counts_.empty() && pending_flags_.empty()) {
          idle_.push_back(std::move(c));
          return true;
        }
        counts.swap(pending_counts_);
        flags.swap(pending_flags_);
      }
      bool ok = true;
      for (auto it = counts.begin(); ok && it != counts.end();) {
        const std::string k = prefix_ + it->first;
        const std::string amount = std::to_string(it->second.amount);
        const std::string ttl = std::to_string(it->second.ttl.count());
        const char* argv[] = {"EVAL",         kAdmitScript, "1",        k.c_str(),
                              amount.c_str(), "0",          ttl.c_str()};
        Reply r(static_cast<redisReply*>(redisCommandArgv(c.get(), 7, argv, nullptr)));
        ok = r && c->err == 0 && r->type == REDIS_REPLY_ARRAY;
        if (ok) it = counts.erase(it);  // pushed: never pushed twice
      }
      if (!ok) {
        restore(std::move(counts), std::move(flags));
        return false;
      }
      const auto now = Clock::now();
      for (const auto& [key, f] : flags) {
        if (f.expires <= now) continue;
        const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(f.expires - now);
        std::vector<std::string> args = {"SET", prefix_ + key, f.value, "PX",
                                         std::to_string(std::max<int64_t>(ms.count(), 1))};
        if (f.only_if_absent) args.emplace_back("NX");
        std::vector<const char*> argv;
        std::vector<size_t> lens;
        for (const auto& a : args) argv.push_back(a.data()), lens.push_back(a.size());
        Reply r(static_cast<redisReply*>(
            redisCommandArgv(c.get(), static_cast<int>(argv.size()), argv.data(), lens.data())));
        if (!r || c->err != 0) {
          restore({}, std::move(flags));
          return false;
        }
      }
    }
  }

  void restore(std::unordered_map<std::string, PendingCount> counts,
               std::unordered_map<std::string, PendingFlag> flags) {
    std::lock_guard lock(mu_);
    for (auto& [key, p] : counts) {
      PendingCount& into = pending_counts_[key];
      into.amount += p.amount;
      into.ttl = p.ttl;
    }
    for (auto& [key, f] : flags) pending_flags_.try_emplace(key, std::move(f));
  }

  const StateSettings settings_;
  const RedisAddress address_;
  mutable std::mutex error_mu_;
  mutable std::string last_error_;
  mutable bool refused_credentials_ = false;
  std::string prefix_;
  LocalState local_;
  std::atomic<bool> connected_{true};
  std::atomic<uint64_t> fallbacks_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Context> idle_;
  uint64_t generation_ = 0;  // bumped when Redis fails: older connections are dropped
  std::unordered_map<std::string, PendingCount> pending_counts_;
  std::unordered_map<std::string, PendingFlag> pending_flags_;
  bool stopping_ = false;
  std::thread reconnector_;
};

}  // namespace

Admission SharedState::admit(const std::string& key, int64_t amount, int64_t limit,
                             std::chrono::milliseconds ttl) {
  const BatchAdmission b = admit_all({CounterChange{key, amount, limit, ttl}});
  return Admission{b.admitted, b.admitted ? counter(key) : b.refused_value, b.answered_locally};
}

void SharedState::add(const std::string& key, int64_t amount, std::chrono::milliseconds ttl) {
  add_all({CounterChange{key, amount, 0, ttl}});
}

namespace {

// %XX escapes in a URL's user or password; nullopt when one is malformed.
std::optional<std::string> percent_decoded(std::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out += text[i];
      continue;
    }
    unsigned value = 0;
    if (i + 2 >= text.size()) return std::nullopt;
    const auto [p, ec] = std::from_chars(text.data() + i + 1, text.data() + i + 3, value, 16);
    if (ec != std::errc() || p != text.data() + i + 3) return std::nullopt;
    out += static_cast<char>(value);
    i += 2;
  }
  return out;
}

}  // namespace

Result<RedisAddress> parse_redis_url(std::string_view url) {
  if (url.starts_with("redis://")) url.remove_prefix(8);
  RedisAddress a;
  // Errors name the URL without its credentials: they end up in logs.
  const size_t at = url.rfind('@');
  const std::string shown =
      "redis://" +
      (at == std::string_view::npos ? std::string(url) : "***@" + std::string(url.substr(at + 1)));
  auto bad = [&](const std::string& why) -> Error {
    return make_error(ErrorKind::kInvalidArgument,
                      "state.url '" + shown + "' " + why +
                          "; write it as redis://HOST:PORT, redis://:PASSWORD@HOST:PORT or "
                          "redis://USER:PASSWORD@HOST:PORT, with /DB after it if not 0");
  };
  if (at != std::string_view::npos) {
    const std::string_view credentials = url.substr(0, at);
    const size_t colon = credentials.find(':');
    if (colon == std::string_view::npos) {
      return bad("has credentials without a colon before the password");
    }
    auto user = percent_decoded(credentials.substr(0, colon));
    auto password = percent_decoded(credentials.substr(colon + 1));
    if (!user || !password) return bad("has a malformed %XX escape in its credentials");
    if (password->empty()) return bad("names a user but no password");
    a.username = std::move(*user);
    a.password = std::move(*password);
    url.remove_prefix(at + 1);
  }
  if (const size_t slash = url.find('/'); slash != std::string_view::npos) {
    const std::string_view db = url.substr(slash + 1);
    const auto [p, ec] = std::from_chars(db.data(), db.data() + db.size(), a.db);
    if (ec != std::errc() || p != db.data() + db.size() || a.db < 0) {
      return bad("has a database number that is not a number");
    }
    url = url.substr(0, slash);
  }
  if (const size_t colon = url.rfind(':'); colon != std::string_view::npos) {
    const std::string_view port = url.substr(colon + 1);
    const auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), a.port);
    if (ec != std::errc() || p != port.data() + port.size() || a.port < 1 || a.port > 65535) {
      return bad("has a port that is not 1-65535");
    }
    url = url.substr(0, colon);
  }
  if (url.empty()) return bad("names no host");
  a.host = std::string(url);
  return a;
}

Result<std::unique_ptr<SharedState>> SharedState::create(const StateSettings& settings) {
  if (settings.backend == "local") return std::unique_ptr<SharedState>(new LocalState());
  if (settings.backend != "redis") {
    return make_error(ErrorKind::kInvalidArgument,
                      "state.backend '" + settings.backend + "' is not one of local, redis");
  }
  if (settings.url.empty()) {
    return make_error(ErrorKind::kInvalidArgument,
                      "state.backend is redis but state.url is empty; set it to "
                      "redis://HOST:PORT");
  }
  auto address = parse_redis_url(settings.url);
  if (!address.ok()) return address.error();
  if (!settings.password_env.empty()) {
    if (!address->password.empty()) {
      return make_error(ErrorKind::kInvalidArgument,
                        "state.url holds a password and state.password_env names " +
                            settings.password_env +
                            " too; keep one (password_env keeps the secret out of the YAML)");
    }
    const char* password = std::getenv(settings.password_env.c_str());
    if (password == nullptr || *password == '\0') {
      return make_error(ErrorKind::kInvalidArgument,
                        "state.password_env names " + settings.password_env +
                            ", which is not set (or empty) in this process's environment; "
                            "export it before starting the gateway");
    }
    address->password = password;
  }
  auto state = std::make_unique<RedisState>(settings, std::move(address).value());
  // Down is something to ride out; a wrong password is a mistake to fix now.
  if (state->refused_credentials()) {
    return make_error(ErrorKind::kInvalidArgument, "state: " + state->last_error());
  }
  return std::unique_ptr<SharedState>(std::move(state));
}

}  // namespace foreshore::state
