// State the gateway replicas of one deployment share: counters (rate-limit
// windows, spend) and short-lived flags (an open circuit breaker, a session's
// pinned tier). `local` keeps them in this process, as one gateway on one
// machine needs; `redis` keeps them in a Redis server that every replica
// talks to, so that three replicas behind a load balancer enforce one budget
// and one rate limit, not three.
//
// Redis being down never fails a request here: every operation falls back to
// this process's own copy (the last values it saw from Redis plus what it
// changed since), says so in its answer, and pushes what it changed back to
// Redis when Redis returns. Whether a budget may then be spent from that copy
// is the caller's policy (StateSettings::budgets_fail_open).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace foreshore::state {

struct StateSettings {
  std::string backend = "local";  // local | redis
  std::string url;                // redis://[[USER]:PASSWORD@]HOST:PORT[/DB] (backend redis)
  // The environment variable that holds the Redis password (AUTH on every
  // connection), so that no secret sits in the YAML; empty: the URL's, if any.
  std::string password_env;
  int32_t timeout_ms = 200;  // connect and per-command timeout
  int32_t pool_size = 8;     // Redis connections this process keeps at most
  int32_t retry_ms = 1000;   // while Redis is down, how often to try it again
  // While Redis is down: true spends budgets from this replica's copy (the
  // replicas together may then overspend), false refuses requests that a
  // budget governs until Redis is back.
  bool budgets_fail_open = true;
};

// One counter's change in SharedState::admit_all / add_all.
struct CounterChange {
  std::string key;
  int64_t amount = 0;
  int64_t limit = 0;                 // 0: none
  std::chrono::milliseconds ttl{0};  // forgotten when unchanged this long; 0: kept
};

// The answer of SharedState::admit_all.
struct BatchAdmission {
  bool admitted = false;
  size_t refused = 0;         // the change that would have passed its limit
  int64_t refused_value = 0;  // that counter as it stands
  bool answered_locally = false;
};

// The answer of SharedState::admit.
struct Admission {
  bool admitted = false;
  int64_t value = 0;              // the counter after the change (or as it stands, if refused)
  bool answered_locally = false;  // Redis was configured but down: this process's copy answered
};

class SharedState {
 public:
  // Checks the settings and, for redis, connects once; a Redis that does not
  // answer yet is not an error (the process starts on its own copy and keeps
  // trying), a malformed URL or unknown backend is.
  static Result<std::unique_ptr<SharedState>> create(const StateSettings& settings);
  virtual ~SharedState() = default;

  // Adds `amount` to the counter `key` unless that would take it past `limit`
  // (limit 0: no limit; amount 0 is refused once the counter has reached the
  // limit). Atomic across replicas. A counter not changed for `ttl` is
  // forgotten (0: kept).
  Admission admit(const std::string& key, int64_t amount, int64_t limit,
                  std::chrono::milliseconds ttl);
  // Adds `amount` (may be negative) without a limit.
  void add(const std::string& key, int64_t amount, std::chrono::milliseconds ttl);
  // admit() for several counters as one step (one round trip to Redis): all
  // of the changes, or, when any would pass its limit, none.
  virtual BatchAdmission admit_all(const std::vector<CounterChange>& changes) = 0;
  // add() for several counters in one round trip; limits are ignored.
  virtual void add_all(const std::vector<CounterChange>& changes) = 0;
  virtual int64_t counter(const std::string& key) = 0;

  // A flag that expires after `ttl`; with only_if_absent an existing flag and
  // its expiry are kept.
  virtual void set_flag(const std::string& key, const std::string& value,
                        std::chrono::milliseconds ttl, bool only_if_absent) = 0;
  virtual std::optional<std::string> flag(const std::string& key) = 0;

  // Long-lived records (virtual API keys): no expiry. Writing one needs the
  // backend up (an error that says so otherwise); reading one while Redis
  // is down answers from what this process last read.
  virtual Status put_record(const std::string& key, const std::string& value) = 0;
  virtual Status remove_record(const std::string& key) = 0;
  virtual std::optional<std::string> record(const std::string& key) = 0;

  // A group in which every replica keeps one member of its own (its
  // measurements, say), rewritten now and then: a member not rewritten for
  // `ttl` is gone, so a replica that stopped drops out. Writing needs the
  // backend up and is otherwise dropped (the next write carries the news);
  // reading answers nullopt while Redis is down, not a stale copy.
  virtual void put_member(const std::string& group, const std::string& member,
                          const std::string& value, std::chrono::milliseconds ttl) = 0;
  virtual std::optional<std::map<std::string, std::string>> members(const std::string& group) = 0;

  // "local" or "redis".
  virtual std::string_view backend() const = 0;
  // False while a configured Redis cannot be reached (always true for local).
  virtual bool connected() const = 0;
  // Operations answered from this process's copy because Redis was down.
  virtual uint64_t local_fallbacks() const = 0;
  // Why Redis last could not be used (empty while connected, and for local).
  virtual std::string last_error() const = 0;
};

// `redis://[[USER]:PASSWORD@]HOST:PORT[/DB]` (or `HOST:PORT`) into its parts,
// USER and PASSWORD percent-decoded; an error that says what is wrong with
// it otherwise.
struct RedisAddress {
  std::string host;
  int port = 6379;
  int db = 0;
  std::string username;  // empty: AUTH PASSWORD (the default user)
  std::string password;  // empty: no AUTH
};
Result<RedisAddress> parse_redis_url(std::string_view url);

}  // namespace foreshore::state
