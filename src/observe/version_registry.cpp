#include "observe/version_registry.h"

#include <utility>

namespace foreshore::observe {

VersionRegistry::VersionRegistry(VersionRegistryOptions options) : options_(std::move(options)) {}

std::chrono::steady_clock::time_point VersionRegistry::now() const {
  return options_.now ? options_.now() : std::chrono::steady_clock::now();
}

void VersionRegistry::register_tier(const std::string& tier, const std::string& model,
                                    const std::string& version) {
  std::lock_guard lock(mu_);
  TierVersion& entry = tiers_[tier];
  entry.tier = tier;
  entry.model = model;
  entry.version = version;
}

bool VersionRegistry::observe(const std::string& tier, const std::string& model,
                              const std::string& version) {
  std::function<void(const VersionChange&)> callback;
  VersionChange change;
  {
    std::lock_guard lock(mu_);
    auto [it, inserted] = tiers_.try_emplace(tier);
    TierVersion& entry = it->second;
    if (inserted) {
      entry = TierVersion{tier, model, version, 0};
      return false;
    }
    const bool model_changed = !model.empty() && !entry.model.empty() && model != entry.model;
    const bool version_changed =
        !version.empty() && !entry.version.empty() && version != entry.version;
    change = VersionChange{tier, entry.model, entry.version, entry.model, entry.version};
    // Fill in what was not known yet without calling it a change.
    if (!model.empty()) entry.model = model;
    if (!version.empty()) entry.version = version;
    if (!model_changed && !version_changed) return false;
    ++entry.changes;
    change.new_model = entry.model;
    change.new_version = entry.version;
    callback = on_change_;
  }
  if (callback) callback(change);
  return true;
}

std::optional<TierVersion> VersionRegistry::tier(const std::string& tier) const {
  std::lock_guard lock(mu_);
  const auto it = tiers_.find(tier);
  if (it == tiers_.end()) return std::nullopt;
  return it->second;
}

std::vector<TierVersion> VersionRegistry::tiers() const {
  std::lock_guard lock(mu_);
  std::vector<TierVersion> out;
  out.reserve(tiers_.size());
  for (const auto& [name, entry] : tiers_) out.push_back(entry);
  return out;
}

uint64_t VersionRegistry::changes(const std::string& tier) const {
  std::lock_guard lock(mu_);
  const auto it = tiers_.find(tier);
  return it == tiers_.end() ? 0 : it->second.changes;
}

void VersionRegistry::set_on_change(std::function<void(const VersionChange&)> callback) {
  std::lock_guard lock(mu_);
  on_change_ = std::move(callback);
}

std::optional<SessionPin> VersionRegistry::pin(const std::string& session_id) {
  const auto t = now();
  std::lock_guard lock(mu_);
  const auto it = sessions_.find(session_id);
  if (it == sessions_.end()) return std::nullopt;
  if (t - it->second->last_used > options_.session_ttl) {
    lru_.erase(it->second);
    sessions_.erase(it);
    return std::nullopt;
  }
  it->second->last_used = t;
  lru_.splice(lru_.begin(), lru_, it->second);
  return it->second->pin;
}

void VersionRegistry::record(const std::string& session_id, const std::string& tier,
                             const std::string& version) {
  if (options_.max_sessions == 0) return;
  const auto t = now();
  std::lock_guard lock(mu_);
  if (const auto it = sessions_.find(session_id); it != sessions_.end()) {
    it->second->pin = SessionPin{tier, version};
    it->second->last_used = t;
    lru_.splice(lru_.begin(), lru_, it->second);
    return;
  }
  // Expired sessions sit at the back; drop them before counting room.
  while (!lru_.empty() && t - lru_.back().last_used > options_.session_ttl) {
    sessions_.erase(lru_.back().id);
    lru_.pop_back();
  }
  while (lru_.size() >= options_.max_sessions) {
    sessions_.erase(lru_.back().id);
    lru_.pop_back();
  }
  lru_.push_front(Session{session_id, SessionPin{tier, version}, t});
  sessions_.emplace(session_id, lru_.begin());
}

void VersionRegistry::forget(const std::string& session_id) {
  std::lock_guard lock(mu_);
  const auto it = sessions_.find(session_id);
  if (it == sessions_.end()) return;
  lru_.erase(it->second);
  sessions_.erase(it);
}

size_t VersionRegistry::session_count() const {
  std::lock_guard lock(mu_);
  return sessions_.size();
}

}  // namespace foreshore::observe
