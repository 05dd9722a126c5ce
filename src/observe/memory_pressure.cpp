#include "observe/memory_pressure.h"

#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string_view>
#include <utility>
#include <vector>

namespace foreshore::observe {
namespace {

namespace fs = std::filesystem;

std::optional<std::string> read_small_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string_view trim(std::string_view s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return {};
  const auto last = s.find_last_not_of(" \t\r\n");
  return s.substr(first, last - first + 1);
}

template <typename T>
std::optional<T> parse_number(std::string_view text) {
  text = trim(text);
  T value{};
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || ptr != text.data() + text.size()) return std::nullopt;
  return value;
}

// "some avg10=1.23 avg60=..." -> 1.23 for the line starting with `kind`.
std::optional<double> psi_avg10(std::string_view text, std::string_view kind) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    if (!line.starts_with(kind) || line.size() <= kind.size() || line[kind.size()] != ' ') {
      continue;
    }
    const auto at = line.find("avg10=");
    if (at == std::string_view::npos) return std::nullopt;
    const std::string_view rest = line.substr(at + 6);
    return parse_number<double>(rest.substr(0, rest.find(' ')));
  }
  return std::nullopt;
}

// "<key> <value>" or "<key>: <value> kB" lines (memory.stat, /proc/meminfo).
std::optional<uint64_t> keyed_value(std::string_view text, std::string_view key) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    if (!line.starts_with(key) || line.size() == key.size()) continue;
    line.remove_prefix(key.size());
    if (line.front() == ':') line.remove_prefix(1);
    if (line.front() != ' ' && line.front() != '\t') continue;
    line = trim(line);
    uint64_t scale = 1;
    if (line.ends_with(" kB")) {
      line.remove_suffix(3);
      scale = 1024;
    }
    const auto value = parse_number<uint64_t>(line);
    if (!value) return std::nullopt;
    return *value * scale;
  }
  return std::nullopt;
}

// The cgroup v2 mount point from mountinfo ("... - cgroup2 ..."), which is
// /sys/fs/cgroup everywhere but on hybrid v1/v2 hosts.
std::string cgroup2_mount(const std::string& root) {
  const auto text = read_small_file(root + "/proc/self/mountinfo");
  if (text) {
    std::istringstream lines(*text);
    std::string line;
    while (std::getline(lines, line)) {
      const auto sep = line.find(" - cgroup2 ");
      if (sep == std::string::npos) continue;
      std::istringstream fields(line.substr(0, sep));
      std::string field, mount_point;
      for (int i = 0; i < 5 && fields >> field; ++i) mount_point = field;
      if (!mount_point.empty()) return mount_point;
    }
  }
  return "/sys/fs/cgroup";
}

struct CgroupUsage {
  uint64_t working_set = 0;
  uint64_t max = 0;
};

// The limit that binds first among the process's cgroup and its ancestors:
// a parent's memory.max caps its children even when theirs is "max".
std::optional<CgroupUsage> cgroup_usage(const std::string& root) {
  const auto membership = read_small_file(root + "/proc/self/cgroup");
  if (!membership) return std::nullopt;
  std::istringstream lines(*membership);
  std::string line, relative;
  bool found = false;
  while (std::getline(lines, line)) {
    if (line.starts_with("0::")) {
      relative = line.substr(3);
      found = true;
      break;
    }
  }
  if (!found) return std::nullopt;  // cgroup v1 only

  const fs::path mount = fs::path(root + cgroup2_mount(root)).lexically_normal();
  const fs::path inside = fs::path(relative).relative_path();
  fs::path dir = inside.empty() ? mount : (mount / inside).lexically_normal();
  if (!dir.string().starts_with(mount.string())) dir = mount;
  std::optional<CgroupUsage> tightest;
  double tightest_ratio = -1.0;
  for (;;) {
    const auto max_text = read_small_file((dir / "memory.max").string());
    const auto current_text = read_small_file((dir / "memory.current").string());
    // "max" (no limit) does not parse and leaves limit at 0.
    const uint64_t limit = max_text ? parse_number<uint64_t>(*max_text).value_or(0) : 0;
    const std::optional<uint64_t> current =
        current_text ? parse_number<uint64_t>(*current_text) : std::nullopt;
    if (limit > 0 && current.has_value()) {
      // Inactive file pages are reclaimed before the limit bites, and a mapped
      // model file would otherwise read as pressure.
      uint64_t working_set = current.value();
      if (const auto stat = read_small_file((dir / "memory.stat").string())) {
        const uint64_t inactive = keyed_value(*stat, "inactive_file").value_or(0);
        working_set = inactive < working_set ? working_set - inactive : 0;
      }
      const double ratio = static_cast<double>(working_set) / static_cast<double>(limit);
      if (ratio > tightest_ratio) {
        tightest_ratio = ratio;
        tightest = CgroupUsage{working_set, limit};
      }
    }
    if (dir == mount) break;
    fs::path parent = dir.parent_path();
    if (parent == dir || parent.string().size() < mount.string().size()) break;
    dir = std::move(parent);
  }
  return tightest;
}

struct SignalLevels {
  int enter = 0;    // highest level whose entering threshold is reached
  int recover = 0;  // highest level whose recovery threshold is reached
};

SignalLevels levels_of(double value, const SignalThresholds& t) {
  SignalLevels out;
  for (int k = 1; k <= 3; ++k) {
    if (value >= t.enter[k - 1]) out.enter = k;
    if (value >= t.recover[k - 1]) out.recover = k;
  }
  return out;
}

std::string describe(const char* name, double value, double threshold) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "%s %.3g >= %.3g", name, value, threshold);
  return buf;
}

Status check_signal(const char* name, const SignalThresholds& t) {
  for (int k = 0; k < 3; ++k) {
    const bool ordered =
        k == 0 || (t.enter[k] >= t.enter[k - 1] && t.recover[k] >= t.recover[k - 1]);
    if (!ordered || t.recover[k] > t.enter[k] || t.enter[k] < 0 || t.recover[k] < 0) {
      return make_error(ErrorKind::kInvalidArgument,
                        std::string("memory pressure thresholds for ") + name +
                            ": enter and recover must each be non-decreasing from level 1 to "
                            "3, non-negative, and recover <= enter at every level");
    }
  }
  return Status::Ok();
}

}  // namespace

std::string_view memory_pressure_level_name(int level) {
  switch (level) {
    case 0:
      return "none";
    case 1:
      return "some";
    case 2:
      return "high";
    case 3:
      return "critical";
    default:
      return "invalid";
  }
}

void apply_memory_pressure_env(MemoryPressureOptions& options) {
  if (const char* file = std::getenv(kSimulateMemoryPressureEnv); file && *file) {
    options.simulate_file = file;
  }
}

Status MemoryPressureMonitor::validate(const MemoryPressureOptions& options) {
  if (options.interval.count() <= 0) {
    return make_error(ErrorKind::kInvalidArgument,
                      "memory pressure interval must be at least 1 ms");
  }
  const MemoryPressureThresholds& t = options.thresholds;
  FSH_TRY_STATUS(check_signal("psi_some", t.psi_some));
  FSH_TRY_STATUS(check_signal("psi_full", t.psi_full));
  FSH_TRY_STATUS(check_signal("cgroup", t.cgroup));
  FSH_TRY_STATUS(check_signal("system", t.system));
  FSH_TRY_STATUS(check_signal("budget", t.budget));
  return Status::Ok();
}

MemoryPressureMonitor::MemoryPressureMonitor(MemoryPressureOptions options)
    : options_(std::move(options)) {}

MemoryPressureMonitor::~MemoryPressureMonitor() {
  stop();
}

void MemoryPressureMonitor::start() {
  std::lock_guard lock(thread_mu_);
  if (thread_.joinable()) return;
  stopping_ = false;
  thread_ = std::thread([this] { run(); });
}

void MemoryPressureMonitor::stop() {
  std::thread thread;
  {
    std::lock_guard lock(thread_mu_);
    stopping_ = true;
    thread = std::move(thread_);
  }
  stop_cv_.notify_all();
  if (thread.joinable()) thread.join();
}

void MemoryPressureMonitor::run() {
  std::unique_lock lock(thread_mu_);
  while (!stopping_) {
    lock.unlock();
    sample_now();
    lock.lock();
    stop_cv_.wait_for(lock, options_.interval, [this] { return stopping_; });
  }
}

void MemoryPressureMonitor::set_simulated_level(std::optional<int> level) {
  std::lock_guard lock(mu_);
  simulated_ = level ? std::optional<int>(std::clamp(*level, 0, 3)) : std::nullopt;
}

void MemoryPressureMonitor::set_on_change(
    std::function<void(int old_level, const MemorySample& sample)> callback) {
  std::lock_guard lock(mu_);
  on_change_ = std::move(callback);
}

MemorySample MemoryPressureMonitor::last_sample() const {
  std::lock_guard lock(mu_);
  return last_;
}

MemorySample MemoryPressureMonitor::sample_now() {
  const std::string& root = options_.root;
  MemorySample s;
  if (const auto psi = read_small_file(root + "/proc/pressure/memory")) {
    s.psi_some_avg10 = psi_avg10(*psi, "some");
    s.psi_full_avg10 = psi_avg10(*psi, "full");
  }
  if (const auto cg = cgroup_usage(root)) {
    s.cgroup_working_set = cg->working_set;
    s.cgroup_max = cg->max;
  }
  if (const auto meminfo = read_small_file(root + "/proc/meminfo")) {
    s.mem_available = keyed_value(*meminfo, "MemAvailable");
    s.mem_total = keyed_value(*meminfo, "MemTotal");
  }
  if (options_.budget_bytes > 0) {
    if (const auto statm = read_small_file(root + "/proc/self/statm")) {
      std::istringstream fields(*statm);
      uint64_t size_pages = 0, resident_pages = 0;
      if (fields >> size_pages >> resident_pages) {
        s.rss_bytes = resident_pages * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
      }
    }
  }
  std::optional<int> from_file;
  if (!options_.simulate_file.empty()) {
    if (const auto text = read_small_file(options_.simulate_file)) {
      if (const auto level = parse_number<int>(*text); level && *level >= 0 && *level <= 3) {
        from_file = *level;
      }
    }
  }

  struct Signal {
    const char* name;
    std::optional<double> value;
    const SignalThresholds& thresholds;
  };
  const MemoryPressureThresholds& t = options_.thresholds;
  std::optional<double> cgroup_ratio, system_ratio, budget_ratio;
  if (s.cgroup_working_set && s.cgroup_max) {
    cgroup_ratio = static_cast<double>(*s.cgroup_working_set) / static_cast<double>(*s.cgroup_max);
  }
  if (s.mem_available && s.mem_total && *s.mem_total > 0) {
    system_ratio = 1.0 - static_cast<double>(*s.mem_available) / static_cast<double>(*s.mem_total);
  }
  if (s.rss_bytes && options_.budget_bytes > 0) {
    budget_ratio = static_cast<double>(*s.rss_bytes) / static_cast<double>(options_.budget_bytes);
  }
  const Signal signals[] = {{"psi_some", s.psi_some_avg10, t.psi_some},
                            {"psi_full", s.psi_full_avg10, t.psi_full},
                            {"cgroup", cgroup_ratio, t.cgroup},
                            {"system", system_ratio, t.system},
                            {"budget", budget_ratio, t.budget}};

  std::function<void(int, const MemorySample&)> callback;
  int old_level = 0;
  {
    std::lock_guard lock(mu_);
    old_level = level_.load(std::memory_order_relaxed);
    s.simulated_level = simulated_ ? simulated_ : from_file;
    if (s.simulated_level) {
      // A simulated level applies at once, without hysteresis, so a test sees
      // its effect at the next sample.
      s.level = *s.simulated_level;
      s.driver = "simulated";
    } else {
      int up = 0, hold = 0;
      for (const Signal& signal : signals) {
        if (!signal.value) continue;
        const SignalLevels l = levels_of(*signal.value, signal.thresholds);
        if (l.enter > up) {
          up = l.enter;
          s.driver = describe(signal.name, *signal.value, signal.thresholds.enter[up - 1]);
        }
        hold = std::max(hold, l.recover);
      }
      s.level = std::max(up, std::min(old_level, hold));
      if (s.level > up) {
        s.driver = "recovering from " + std::string(memory_pressure_level_name(old_level)) +
                   ": a signal is still above its recovery threshold";
      }
    }
    level_.store(s.level, std::memory_order_release);
    last_ = s;
    if (s.level != old_level) {
      changes_.fetch_add(1, std::memory_order_relaxed);
      callback = on_change_;
    }
  }
  if (callback) callback(old_level, s);
  return s;
}

}  // namespace foreshore::observe
