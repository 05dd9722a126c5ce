// `foreshore report`: what the audit store says about a period — cost against
// sending everything to the cloud, cloud share, latency per tier, and the
// escalation, degradation and error rates, overall and per data class.
#pragma once

#include <chrono>
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace foreshore::observe {

// Nearest-rank percentiles: pN is the smallest value with at least N % of the
// values at or below it, so every reported figure is a measured latency.
struct LatencySummary {
  int64_t count = 0;  // rows with a value
  double p50 = 0.0, p95 = 0.0, p99 = 0.0;
};
LatencySummary summarize_latency(std::vector<double> values);

struct TierReport {
  std::string tier;  // "(none)" for requests no tier answered
  std::string placement;
  int64_t requests = 0;
  double cost_usd = 0.0;
  LatencySummary ttft_ms;
  LatencySummary total_ms;
};

// Rates are fractions of `requests` (0 when there are none).
struct GroupTotals {
  int64_t requests = 0;
  double cost_usd = 0.0;
  double cloud_only_cost_usd = 0.0;
  // Savings count only the requests the router chose for, with the cloud
  // allowed, that were answered as planned: a degraded answer (the edge
  // stepping in because the cloud failed) saved nothing by choice, device-only
  // data could never have gone to the cloud, and a failure is no saving.
  int64_t compared_requests = 0;
  double compared_cloud_only_cost_usd = 0.0;
  double cost_saved_usd =
      0.0;  // over compared requests: cloud-only - actual; < 0: hybrid cost more
  double cost_saved_pct = 0.0;  // of compared_cloud_only_cost_usd; 0 when that is 0
  int64_t degraded_requests = 0;
  double degraded_cloud_only_cost_usd = 0.0;  // what the degraded ones would have cost on the cloud
  int64_t device_only_requests = 0;
  double device_only_cloud_only_cost_usd = 0.0;
  int64_t failed_requests = 0;
  double cloud_share = 0.0;  // answered by a cloud-placed tier
  double escalation_rate = 0.0;
  double degradation_rate = 0.0;
  double error_rate = 0.0;  // outcome "error:<kind>"
};

struct DataClassReport {
  std::string data_class;
  GroupTotals totals;
};

struct Report {
  std::string db_path;
  std::optional<int64_t> since_ms;           // window start (epoch ms); unset = all rows
  int64_t until_ms = 0;                      // when the report was made
  std::optional<int64_t> first_ms, last_ms;  // oldest and newest row in the window
  GroupTotals totals;
  std::vector<TierReport> tiers;              // by tier name
  std::vector<DataClassReport> data_classes;  // by class name
};

struct ReportOptions {
  std::optional<std::chrono::seconds> since{};  // only rows newer than now - since
  int64_t now_ms = 0;                           // 0 = the current time
};

// Reads the store read-only, so it can run while a server writes to it.
Result<Report> build_report(const std::string& db_path, const ReportOptions& options = {});

// "90s", "30m", "24h", "7d", "2w" (a positive integer and one unit).
Result<std::chrono::seconds> parse_duration(std::string_view text);

nlohmann::ordered_json report_to_json(const Report& report);
std::string format_report(const Report& report);

}  // namespace foreshore::observe
