// The latencies replicas learn, pooled through the state they share
// (src/state, backend redis): each replica publishes what it measured of
// every tier under its own name, reads what the others measured, and gives
// its router their figures, so that a replica that has never sent to a tier
// predicts its latency from what the others saw. Off the request path: a
// thread does it once per interval. While Redis is down each replica's
// router goes on with its own measurements alone.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

#include "route/router.h"
#include "state/state.h"

namespace foreshore::hybrid {

class LatencySharing {
 public:
  // Syncs once per `interval` on a thread of its own until destroyed (an
  // interval of 0 starts no thread: the caller calls sync_once). `replica`
  // names this process among the others (default: host name and process id).
  LatencySharing(route::Router& router, state::SharedState& state,
                 std::chrono::milliseconds interval = std::chrono::seconds(1),
                 std::string replica = {});
  ~LatencySharing();
  LatencySharing(const LatencySharing&) = delete;
  LatencySharing& operator=(const LatencySharing&) = delete;

  // Publishes this replica's measurements, then pools the other replicas'
  // into the router. The number of other replicas heard from; 0 when none
  // (or the state cannot be read: the router then keeps its own alone).
  size_t sync_once();

  const std::string& replica() const { return replica_; }

 private:
  void run();

  route::Router& router_;
  state::SharedState& state_;
  const std::chrono::milliseconds interval_;
  const std::string replica_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace foreshore::hybrid
