// Memory pressure as one level, 0 none, 1 some, 2 high, 3 critical, from every
// signal Linux gives a process: PSI stall time, the cgroup v2 limit, the
// system's MemAvailable, and the budget the operator grants the process.
//
// Each signal is a "higher is worse" number with an entering threshold per
// level and a lower recovery threshold: a level is entered when any signal
// reaches its entering threshold and left only when every signal has fallen
// below the recovery one, so a signal hovering at a threshold does not make
// the router flap between plans. A background thread samples every interval;
// level() is an atomic load for the request path.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "common/result.h"

namespace foreshore::observe {

inline constexpr int kMemoryPressureLevels = 4;  // 0..3
inline constexpr const char* kSimulateMemoryPressureEnv =
    "FORESHORE_SIMULATE_MEMORY_PRESSURE_FILE";

std::string_view memory_pressure_level_name(int level);  // none, some, high, critical

struct SignalThresholds {
  // enter[k-1]: the value at or above which level k is entered. Use infinity
  // to keep a signal out of a level.
  std::array<double, 3> enter;
  // recover[k-1]: level k is left once the value is below this (<= enter[k-1]).
  std::array<double, 3> recover;
};

inline constexpr double kNeverEnter = std::numeric_limits<double>::infinity();

struct MemoryPressureThresholds {
  // Percent of the last 10 s some / all tasks stalled on memory (PSI avg10).
  SignalThresholds psi_some{{10, 30, 60}, {5, 20, 45}};
  SignalThresholds psi_full{{2, 10, 25}, {1, 5, 15}};
  // Working set (memory.current less inactive file cache) / memory.max, for
  // the tightest limit among the process's cgroup and its ancestors.
  SignalThresholds cgroup{{0.80, 0.90, 0.95}, {0.75, 0.85, 0.92}};
  // 1 - MemAvailable / MemTotal.
  SignalThresholds system{{0.85, 0.92, 0.97}, {0.80, 0.88, 0.94}};
  // Resident set size / MemoryPressureOptions::budget_bytes.
  SignalThresholds budget{{0.80, 0.90, 0.98}, {0.75, 0.85, 0.94}};
};

struct MemoryPressureOptions {
  // Prefix put before /proc/... and /sys/fs/cgroup/... so tests can point the
  // monitor at a folder of fake files; empty in production.
  std::string root;
  std::chrono::milliseconds interval{1000};
  uint64_t budget_bytes = 0;  // 0 = no budget signal
  MemoryPressureThresholds thresholds;
  // A file whose content ("0".."3") replaces the measured level while it
  // exists and holds a level; re-read on every sample. For end-to-end tests.
  std::string simulate_file{};
};

// Sets simulate_file from FORESHORE_SIMULATE_MEMORY_PRESSURE_FILE when set.
void apply_memory_pressure_env(MemoryPressureOptions& options);

struct MemorySample {
  std::optional<double> psi_some_avg10, psi_full_avg10;    // percent
  std::optional<uint64_t> cgroup_working_set, cgroup_max;  // bytes, tightest cgroup
  std::optional<uint64_t> mem_available, mem_total;        // bytes
  std::optional<uint64_t> rss_bytes;
  std::optional<int> simulated_level;
  int level = 0;
  std::string driver;  // the signal that set the level, e.g. "cgroup 0.93 >= 0.90"
};

class MemoryPressureMonitor {
 public:
  static Status validate(const MemoryPressureOptions& options);

  explicit MemoryPressureMonitor(MemoryPressureOptions options);
  ~MemoryPressureMonitor();  // stops the sampling thread
  MemoryPressureMonitor(const MemoryPressureMonitor&) = delete;
  MemoryPressureMonitor& operator=(const MemoryPressureMonitor&) = delete;

  // Samples every interval on a background thread until stop() (idempotent).
  void start();
  void stop();
  // Reads every signal once and updates the level; start() calls it on its
  // thread, tests call it directly.
  MemorySample sample_now();

  int level() const noexcept { return level_.load(std::memory_order_acquire); }
  MemorySample last_sample() const;
  uint64_t level_changes() const noexcept { return changes_.load(std::memory_order_relaxed); }

  // Overrides the measured level (and the simulate file) until reset with
  // nullopt; takes effect at the next sample.
  void set_simulated_level(std::optional<int> level);
  // Called on the sampling thread after the level changed.
  void set_on_change(std::function<void(int old_level, const MemorySample& sample)> callback);

 private:
  void run();

  const MemoryPressureOptions options_;
  std::atomic<int> level_{0};
  std::atomic<uint64_t> changes_{0};

  mutable std::mutex mu_;
  MemorySample last_;
  std::optional<int> simulated_;
  std::function<void(int, const MemorySample&)> on_change_;

  std::mutex thread_mu_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace foreshore::observe
