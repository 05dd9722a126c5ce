// Which model and version each tier serves, and which tier and version each
// conversation started on.
//
// A tier's version can change under a running gateway (an upstream rolls a
// model forward, an edge model is swapped on reload); observe() after every
// response notices, logs and counts it. Sessions are pinned so that one
// conversation does not switch models mid-way; the table is an LRU bounded in
// size and age so that clients inventing session ids cannot grow it.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace foreshore::observe {

struct TierVersion {
  std::string tier;
  std::string model;
  std::string version;
  uint64_t changes = 0;  // version changes seen since registration
};

struct VersionChange {
  std::string tier;
  std::string old_model, old_version;
  std::string new_model, new_version;
};

struct SessionPin {
  std::string tier;
  std::string version;
};

struct VersionRegistryOptions {
  size_t max_sessions = 10000;
  std::chrono::seconds session_ttl{std::chrono::hours(1)};  // since the session was last used
  // Injected by tests; steady_clock::now otherwise.
  std::function<std::chrono::steady_clock::time_point()> now{};
};

class VersionRegistry {
 public:
  explicit VersionRegistry(VersionRegistryOptions options = {});

  // Records what a tier serves at start or reload; never counts as a change.
  void register_tier(const std::string& tier, const std::string& model, const std::string& version);
  // Records what a response says the tier served; returns true, calls the
  // change callback and counts when model or version differ from the last
  // known. An empty model or version means "not reported" and never differs.
  bool observe(const std::string& tier, const std::string& model, const std::string& version);
  std::optional<TierVersion> tier(const std::string& tier) const;
  std::vector<TierVersion> tiers() const;  // by tier name
  uint64_t changes(const std::string& tier) const;
  // Called outside the registry's lock, so it may call back into the registry.
  void set_on_change(std::function<void(const VersionChange&)> callback);

  // The tier and version the session started on; nullopt when unknown or
  // expired. A hit counts as use and keeps the session alive.
  std::optional<SessionPin> pin(const std::string& session_id);
  // Pins (or re-pins, after its tier failed) a session.
  void record(const std::string& session_id, const std::string& tier, const std::string& version);
  void forget(const std::string& session_id);
  size_t session_count() const;

 private:
  struct Session {
    std::string id;
    SessionPin pin;
    std::chrono::steady_clock::time_point last_used;
  };
  std::chrono::steady_clock::time_point now() const;

  const VersionRegistryOptions options_;
  mutable std::mutex mu_;
  std::map<std::string, TierVersion> tiers_;
  std::function<void(const VersionChange&)> on_change_;
  std::list<Session> lru_;  // most recently used first
  std::unordered_map<std::string, std::list<Session>::iterator> sessions_;
};

}  // namespace foreshore::observe
