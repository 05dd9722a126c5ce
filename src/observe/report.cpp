#include "observe/report.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <map>
#include <nlohmann/json.hpp>

#include "observe/sqlite_db.h"

namespace foreshore::observe {
namespace {

using json = nlohmann::ordered_json;

struct Row {
  double cost = 0.0;
  double cloud_cost = 0.0;
  bool on_cloud = false;
  bool escalated = false;
  bool degraded = false;
  bool error = false;
  bool device_only = false;
};

struct Accumulator {
  GroupTotals totals;
  int64_t cloud = 0, escalated = 0;
  double compared_cost = 0.0;

  void add(const Row& r) {
    GroupTotals& t = totals;
    ++t.requests;
    t.cost_usd += r.cost;
    t.cloud_only_cost_usd += r.cloud_cost;
    cloud += r.on_cloud;
    escalated += r.escalated;
    if (r.error) {
      ++t.failed_requests;
    } else if (r.device_only) {
      ++t.device_only_requests;
      t.device_only_cloud_only_cost_usd += r.cloud_cost;
    } else if (r.degraded) {
      ++t.degraded_requests;
      t.degraded_cloud_only_cost_usd += r.cloud_cost;
    } else {
      ++t.compared_requests;
      t.compared_cloud_only_cost_usd += r.cloud_cost;
      compared_cost += r.cost;
    }
  }

  GroupTotals finish() const {
    GroupTotals t = totals;
    t.cost_saved_usd = t.compared_cloud_only_cost_usd - compared_cost;
    t.cost_saved_pct = t.compared_cloud_only_cost_usd > 0
                           ? 100.0 * t.cost_saved_usd / t.compared_cloud_only_cost_usd
                           : 0.0;
    if (t.requests > 0) {
      const auto n = static_cast<double>(t.requests);
      t.cloud_share = static_cast<double>(cloud) / n;
      t.escalation_rate = static_cast<double>(escalated) / n;
      t.degradation_rate = static_cast<double>(t.degraded_requests) / n;
      t.error_rate = static_cast<double>(t.failed_requests) / n;
    }
    return t;
  }
};

struct TierAccumulator {
  std::string placement;
  int64_t requests = 0;
  double cost = 0.0;
  std::vector<double> ttft, total;
};

double nearest_rank(const std::vector<double>& sorted, double pct) {
  const auto n = static_cast<double>(sorted.size());
  const auto rank = static_cast<size_t>(std::ceil(pct / 100.0 * n));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

std::string column_text(sqlite3_stmt* stmt, int index) {
  const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt, index));
  return text ? std::string(text) : std::string();
}

int64_t current_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string utc_time(int64_t ms) {
  const std::time_t seconds = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&seconds, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

json latency_json(const LatencySummary& s) {
  return json{{"count", s.count}, {"p50", s.p50}, {"p95", s.p95}, {"p99", s.p99}};
}

json totals_json(const GroupTotals& t) {
  return json{{"requests", t.requests},
              {"cost_usd", t.cost_usd},
              {"cloud_only_cost_usd", t.cloud_only_cost_usd},
              {"compared_requests", t.compared_requests},
              {"compared_cloud_only_cost_usd", t.compared_cloud_only_cost_usd},
              {"cost_saved_usd", t.cost_saved_usd},
              {"cost_saved_pct", t.cost_saved_pct},
              {"degraded_requests", t.degraded_requests},
              {"degraded_cloud_only_cost_usd", t.degraded_cloud_only_cost_usd},
              {"device_only_requests", t.device_only_requests},
              {"device_only_cloud_only_cost_usd", t.device_only_cloud_only_cost_usd},
              {"failed_requests", t.failed_requests},
              {"cloud_share", t.cloud_share},
              {"escalation_rate", t.escalation_rate},
              {"degradation_rate", t.degradation_rate},
              {"error_rate", t.error_rate}};
}

std::string format(const char* fmt, auto... args) {
  char buf[256];
  std::snprintf(buf, sizeof buf, fmt, args...);
  return buf;
}

std::string pct(double fraction) {
  return format("%.1f %%", 100.0 * fraction);
}

}  // namespace

Result<std::chrono::seconds> parse_duration(std::string_view text) {
  const auto bad = [&] {
    return make_error(ErrorKind::kInvalidArgument,
                      "duration \"" + std::string(text) +
                          "\" is not a positive number with a unit; write e.g. 90s, 30m, 24h, "
                          "7d or 2w");
  };
  if (text.size() < 2) return bad();
  int64_t amount = 0;
  const char* end = text.data() + text.size() - 1;
  const auto [ptr, ec] = std::from_chars(text.data(), end, amount);
  if (ec != std::errc() || ptr != end || amount <= 0) return bad();
  int64_t unit = 0;
  switch (text.back()) {
    case 's':
      unit = 1;
      break;
    case 'm':
      unit = 60;
      break;
    case 'h':
      unit = 3600;
      break;
    case 'd':
      unit = 86400;
      break;
    case 'w':
      unit = 7 * 86400;
      break;
    default:
      return bad();
  }
  if (amount > INT64_MAX / unit / 1000) return bad();
  return std::chrono::seconds(amount * unit);
}

Result<Report> build_report(const std::string& db_path, const ReportOptions& options) {
  FSH_ASSIGN_OR_RETURN(detail::DbPtr db, detail::open_audit_db(db_path, /*writable=*/false,
                                                               /*busy_timeout_ms=*/5000));
  Report report;
  report.db_path = db_path;
  report.until_ms = options.now_ms != 0 ? options.now_ms : current_ms();
  if (options.since) {
    report.since_ms = report.until_ms -
                      std::chrono::duration_cast<std::chrono::milliseconds>(*options.since).count();
  }

  FSH_ASSIGN_OR_RETURN(
      detail::StmtPtr stmt,
      detail::prepare(db.get(),
                      "SELECT tier, placement, data_class, cost_usd, cloud_cost_usd, ttft_ms, "
                      "total_ms, outcome, escalated, degraded, ts_ms FROM requests WHERE ts_ms >= "
                      "?1 AND ts_ms <= ?2"));
  sqlite3_bind_int64(stmt.get(), 1, report.since_ms.value_or(INT64_MIN));
  sqlite3_bind_int64(stmt.get(), 2, report.until_ms);

  Accumulator all;
  std::map<std::string, Accumulator> by_class;
  std::map<std::string, TierAccumulator> by_tier;
  int rc = SQLITE_ROW;
  while ((rc = sqlite3_step(stmt.get())) == SQLITE_ROW) {
    sqlite3_stmt* s = stmt.get();
    std::string tier = column_text(s, 0);
    std::string placement = column_text(s, 1);
    const double cost = sqlite3_column_double(s, 3);
    const double cloud_cost = sqlite3_column_double(s, 4);
    const bool has_ttft = sqlite3_column_type(s, 5) != SQLITE_NULL;
    const double ttft = sqlite3_column_double(s, 5);
    const double total = sqlite3_column_double(s, 6);
    const bool error = column_text(s, 7).starts_with("error");
    const bool escalated = sqlite3_column_int(s, 8) != 0;
    const bool degraded = sqlite3_column_int(s, 9) != 0;
    const int64_t ts = sqlite3_column_int64(s, 10);
    report.first_ms = std::min(report.first_ms.value_or(ts), ts);
    report.last_ms = std::max(report.last_ms.value_or(ts), ts);

    const std::string data_class = column_text(s, 2);
    const Row row{cost,     cloud_cost, placement == "cloud",       escalated,
                  degraded, error,      data_class == "device-only"};
    all.add(row);
    by_class[data_class].add(row);
    TierAccumulator& t = by_tier[tier.empty() ? "(none)" : tier];
    if (t.placement.empty()) t.placement = std::move(placement);
    ++t.requests;
    t.cost += cost;
    // Latency of failed requests says how fast we failed, not how fast the tier serves.
    if (!error) {
      if (has_ttft) t.ttft.push_back(ttft);
      t.total.push_back(total);
    }
  }
  if (rc != SQLITE_DONE) return detail::db_error(db.get(), "reading audit store " + db_path);

  report.totals = all.finish();
  for (auto& [name, acc] : by_class) report.data_classes.push_back({name, acc.finish()});
  for (auto& [name, acc] : by_tier) {
    report.tiers.push_back(TierReport{name, acc.placement, acc.requests, acc.cost,
                                      summarize_latency(std::move(acc.ttft)),
                                      summarize_latency(std::move(acc.total))});
  }
  return report;
}

json report_to_json(const Report& report) {
  json out;
  out["db"] = report.db_path;
  out["since_ms"] = report.since_ms ? json(*report.since_ms) : json(nullptr);
  out["until_ms"] = report.until_ms;
  out["first_ms"] = report.first_ms ? json(*report.first_ms) : json(nullptr);
  out["last_ms"] = report.last_ms ? json(*report.last_ms) : json(nullptr);
  out["totals"] = totals_json(report.totals);
  json tiers = json::array();
  for (const TierReport& t : report.tiers) {
    tiers.push_back(json{{"tier", t.tier},
                         {"placement", t.placement},
                         {"requests", t.requests},
                         {"cost_usd", t.cost_usd},
                         {"ttft_ms", latency_json(t.ttft_ms)},
                         {"total_ms", latency_json(t.total_ms)}});
  }
  out["tiers"] = std::move(tiers);
  json classes = json::array();
  for (const DataClassReport& c : report.data_classes) {
    json entry = {{"data_class", c.data_class}};
    entry.update(totals_json(c.totals));
    classes.push_back(std::move(entry));
  }
  out["data_classes"] = std::move(classes);
  return out;
}

std::string format_report(const Report& report) {
  const GroupTotals& t = report.totals;
  std::string out = "Foreshore report: " + report.db_path + "\n";
  out += "window            " +
         (report.since_ms ? utc_time(*report.since_ms) : std::string("all rows")) + " .. " +
         utc_time(report.until_ms) + "\n";
  if (t.requests == 0) return out + "requests          0 (no audit rows in this window)\n";
  out += format("requests          %lld\n", static_cast<long long>(t.requests));
  out += format("cost              $%.6f\n", t.cost_usd);
  out += format("cloud-only cost   $%.6f\n", t.cloud_only_cost_usd);
  out +=
      format("cost saved        $%.6f (%.1f %%) on %lld requests routed with the cloud allowed\n",
             t.cost_saved_usd, t.cost_saved_pct, static_cast<long long>(t.compared_requests));
  out += format(
      "not a saving      %lld degraded (cloud failed; $%.6f on the cloud), %lld device-only "
      "($%.6f), %lld failed\n",
      static_cast<long long>(t.degraded_requests), t.degraded_cloud_only_cost_usd,
      static_cast<long long>(t.device_only_requests), t.device_only_cloud_only_cost_usd,
      static_cast<long long>(t.failed_requests));
  out += "cloud share       " + pct(t.cloud_share) + "\n";
  out += "escalation rate   " + pct(t.escalation_rate) + "\n";
  out += "degradation rate  " + pct(t.degradation_rate) + "\n";
  out += "error rate        " + pct(t.error_rate) + "\n\n";

  out += format("%-16s %-9s %9s %12s %26s %26s\n", "tier", "placement", "requests", "cost $",
                "TTFT ms p50/p95/p99", "total ms p50/p95/p99");
  for (const TierReport& tier : report.tiers) {
    const auto lat = [](const LatencySummary& s) {
      return s.count == 0 ? std::string("-") : format("%.1f/%.1f/%.1f", s.p50, s.p95, s.p99);
    };
    out += format("%-16s %-9s %9lld %12.6f %26s %26s\n", tier.tier.c_str(), tier.placement.c_str(),
                  static_cast<long long>(tier.requests), tier.cost_usd, lat(tier.ttft_ms).c_str(),
                  lat(tier.total_ms).c_str());
  }
  out += "\n";
  out += format("%-14s %9s %12s %12s %9s %8s %10s %9s %7s\n", "data class", "requests", "cost $",
                "cloud-only $", "saved", "cloud", "escalated", "degraded", "errors");
  for (const DataClassReport& c : report.data_classes) {
    const GroupTotals& g = c.totals;
    // Nothing to compare (all device-only, degraded or failed): no saving to show.
    const std::string saved =
        g.compared_requests == 0 ? std::string("-") : format("%.1f %%", g.cost_saved_pct);
    out += format("%-14s %9lld %12.6f %12.6f %9s %8s %10s %9s %7s\n",
                  c.data_class.empty() ? "(unset)" : c.data_class.c_str(),
                  static_cast<long long>(g.requests), g.cost_usd, g.cloud_only_cost_usd,
                  saved.c_str(), pct(g.cloud_share).c_str(), pct(g.escalation_rate).c_str(),
                  pct(g.degradation_rate).c_str(), pct(g.error_rate).c_str());
  }
  return out;
}

LatencySummary summarize_latency(std::vector<double> values) {
  LatencySummary s;
  s.count = static_cast<int64_t>(values.size());
  if (values.empty()) return s;
  std::sort(values.begin(), values.end());
  s.p50 = nearest_rank(values, 50);
  s.p95 = nearest_rank(values, 95);
  s.p99 = nearest_rank(values, 99);
  return s;
}

}  // namespace foreshore::observe
