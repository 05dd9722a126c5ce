#include "observe/metrics.h"

#include <cmath>
#include <cstdio>

namespace foreshore::observe {
namespace {

void atomic_add(std::atomic<double>& a, double v) {
  double cur = a.load(std::memory_order_relaxed);
  while (!a.compare_exchange_weak(cur, cur + v, std::memory_order_relaxed)) {
  }
}

void append_number(std::string& out, double v) {
  if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
    return;
  }
  char buf[32];
  const int n = std::snprintf(buf, sizeof buf, "%.15g", v);
  out.append(buf, static_cast<size_t>(n));
}

void append_label_value(std::string& out, const std::string& v) {
  for (char c : v) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
}

}  // namespace

void Counter::add(double v) {
  atomic_add(value_, v);
}
void Gauge::add(double v) {
  atomic_add(value_, v);
}

void Histogram::observe(double seconds) {
  size_t i = 0;
  while (i < kBounds.size() && seconds > kBounds[i]) ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  atomic_add(sum_, seconds);
}

MetricsRegistry::Series& MetricsRegistry::series(const std::string& name, Type type,
                                                 const std::string& help,
                                                 const std::vector<std::string>& label_names,
                                                 const std::vector<std::string>& label_values) {
  std::lock_guard lock(mu_);
  auto [fit, fresh] = families_.try_emplace(name, Family{type, help, {}});
  auto [sit, created] = fit->second.series.try_emplace(label_values);
  Series& s = sit->second;
  if (created) {
    for (size_t i = 0; i < label_names.size() && i < label_values.size(); ++i) {
      if (i > 0) s.labels += ',';
      s.labels += label_names[i];
      s.labels += "=\"";
      append_label_value(s.labels, label_values[i]);
      s.labels += '"';
    }
    switch (type) {
      case Type::kCounter:
        s.counter = std::make_unique<Counter>();
        break;
      case Type::kGauge:
        s.gauge = std::make_unique<Gauge>();
        break;
      case Type::kHistogram:
        s.histogram = std::make_unique<Histogram>();
        break;
    }
  }
  return s;
}

Counter& MetricsRegistry::counter(const std::string& name, const std::string& help,
                                  const std::vector<std::string>& label_names,
                                  const std::vector<std::string>& label_values) {
  return *series(name, Type::kCounter, help, label_names, label_values).counter;
}

Gauge& MetricsRegistry::gauge(const std::string& name, const std::string& help,
                              const std::vector<std::string>& label_names,
                              const std::vector<std::string>& label_values) {
  return *series(name, Type::kGauge, help, label_names, label_values).gauge;
}

Histogram& MetricsRegistry::histogram(const std::string& name, const std::string& help,
                                      const std::vector<std::string>& label_names,
                                      const std::vector<std::string>& label_values) {
  return *series(name, Type::kHistogram, help, label_names, label_values).histogram;
}

std::string MetricsRegistry::render() const {
  std::string out;
  out.reserve(4096);
  std::lock_guard lock(mu_);
  for (const auto& [name, family] : families_) {
    out += "# HELP " + name + " " + family.help + "\n# TYPE " + name + " ";
    out += family.type == Type::kCounter ? "counter\n"
           : family.type == Type::kGauge ? "gauge\n"
                                         : "histogram\n";
    for (const auto& [values, s] : family.series) {
      const std::string braces = s.labels.empty() ? "" : "{" + s.labels + "}";
      if (family.type != Type::kHistogram) {
        out += name + braces + " ";
        append_number(out, s.counter ? s.counter->value() : s.gauge->value());
        out += '\n';
        continue;
      }
      const Histogram& h = *s.histogram;
      const std::string sep = s.labels.empty() ? "" : ",";
      uint64_t cumulative = 0;
      for (size_t i = 0; i <= Histogram::kBounds.size(); ++i) {
        cumulative += h.buckets_[i].load(std::memory_order_relaxed);
        out += name + "_bucket{" + s.labels + sep + "le=\"";
        append_number(out, i < Histogram::kBounds.size() ? Histogram::kBounds[i] : INFINITY);
        out += "\"} " + std::to_string(cumulative) + "\n";
      }
      out += name + "_sum" + braces + " ";
      append_number(out, h.sum_.load(std::memory_order_relaxed));
      out += "\n" + name + "_count" + braces + " " + std::to_string(h.count()) + "\n";
    }
  }
  return out;
}

}  // namespace foreshore::observe
