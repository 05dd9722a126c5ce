#include "hybrid/latency_sharing.h"

#include <unistd.h>

#include <map>
#include <nlohmann/json.hpp>

namespace foreshore::hybrid {
namespace {

constexpr const char* kGroup = "latency";
// A replica silent for this many intervals has stopped (or lost Redis): its
// figures no longer count.
constexpr int kIntervalsKept = 5;

std::string default_replica() {
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
  return std::string(host) + ":" + std::to_string(getpid());
}

// {"tier": [ttft_ms, ms_per_token, weight], ...}: only tiers measured.
std::string encode(const std::vector<std::pair<std::string, route::LatencySummary>>& latency) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [tier, l] : latency) {
    if (l.weight > 0.0) j[tier] = {l.ttft_ms, l.ms_per_token, l.weight};
  }
  return j.dump();
}

}  // namespace

LatencySharing::LatencySharing(route::Router& router, state::SharedState& state,
                               std::chrono::milliseconds interval, std::string replica)
    : router_(router),
      state_(state),
      interval_(interval),
      replica_(replica.empty() ? default_replica() : std::move(replica)) {
  if (interval_.count() > 0) thread_ = std::thread([this] { run(); });
}

LatencySharing::~LatencySharing() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void LatencySharing::run() {
  std::unique_lock lock(mu_);
  while (!cv_.wait_for(lock, interval_, [&] { return stopping_; })) {
    lock.unlock();
    sync_once();
    lock.lock();
  }
}

size_t LatencySharing::sync_once() {
  const std::vector<std::pair<std::string, route::LatencySummary>> own = router_.own_latency();
  const std::chrono::milliseconds ttl =
      std::max(interval_, std::chrono::milliseconds(1000)) * kIntervalsKept;
  state_.put_member(kGroup, replica_, encode(own), ttl);

  // Per tier, the others' figures pooled by the measurements behind each.
  std::map<std::string, route::LatencySummary> peers;
  size_t heard = 0;
  if (const auto members = state_.members(kGroup)) {
    for (const auto& [replica, text] : *members) {
      if (replica == replica_) continue;
      const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
      if (!j.is_object()) continue;  // not written by this version: skipped
      ++heard;
      for (const auto& [tier, v] : j.items()) {
        if (!v.is_array() || v.size() != 3 || !v[0].is_number() || !v[1].is_number() ||
            !v[2].is_number()) {
          continue;
        }
        const double weight = v[2].get<double>();
        if (weight <= 0.0) continue;
        route::LatencySummary& p = peers[tier];
        p.ttft_ms += v[0].get<double>() * weight;
        p.ms_per_token += v[1].get<double>() * weight;
        p.weight += weight;
      }
    }
  }
  for (const auto& [tier, l] : own) {
    route::LatencySummary pooled;
    if (auto it = peers.find(tier); it != peers.end()) {
      pooled = it->second;
      pooled.ttft_ms /= pooled.weight;
      pooled.ms_per_token /= pooled.weight;
    }
    router_.set_peer_latency(tier, pooled);  // none heard: this replica's own alone
  }
  return heard;
}

}  // namespace foreshore::hybrid
