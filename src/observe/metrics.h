// A small Prometheus registry: counters, gauges and histograms with labels,
// rendered in the text exposition format. Series are created once and then
// updated with atomics, so the request path takes a lock only to look a series up.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace foreshore::observe {

class Counter {
 public:
  void add(double v = 1.0);
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Gauge {
 public:
  void add(double v);
  void set(double v) { value_.store(v, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

class Histogram {
 public:
  // Upper bounds in seconds, ascending; +Inf is implicit.
  static constexpr std::array<double, 16> kBounds = {
      0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  void observe(double seconds);
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }

 private:
  friend class MetricsRegistry;
  std::array<std::atomic<uint64_t>, kBounds.size() + 1> buckets_{};
  std::atomic<uint64_t> count_{0};
  std::atomic<double> sum_{0.0};
};

class MetricsRegistry {
 public:
  // The returned reference stays valid for the registry's lifetime. Label
  // values are given in the order the family's label names were declared.
  Counter& counter(const std::string& name, const std::string& help,
                   const std::vector<std::string>& label_names,
                   const std::vector<std::string>& label_values);
  Gauge& gauge(const std::string& name, const std::string& help,
               const std::vector<std::string>& label_names,
               const std::vector<std::string>& label_values);
  Histogram& histogram(const std::string& name, const std::string& help,
                       const std::vector<std::string>& label_names,
                       const std::vector<std::string>& label_values);

  std::string render() const;

 private:
  enum class Type { kCounter, kGauge, kHistogram };
  struct Series {
    std::string labels;  // rendered: a="x",b="y"
    std::unique_ptr<Counter> counter;
    std::unique_ptr<Gauge> gauge;
    std::unique_ptr<Histogram> histogram;
  };
  struct Family {
    Type type;
    std::string help;
    std::map<std::vector<std::string>, Series> series;
  };
  Series& series(const std::string& name, Type type, const std::string& help,
                 const std::vector<std::string>& label_names,
                 const std::vector<std::string>& label_values);

  mutable std::mutex mu_;
  std::map<std::string, Family> families_;
};

}  // namespace foreshore::observe
