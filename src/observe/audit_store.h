// Audit trail: one SQLite row per request, written off the request path.
//
// submit() only moves the record into a bounded queue; one writer thread owns
// the database connection and writes whatever has queued up in one
// transaction, so a burst costs one commit rather than one per request. When
// the queue is full the record is dropped and counted: losing an audit row is
// preferable to delaying an answer. The prompt is kept as a SHA-256 hash;
// its text is stored only when the operator opts in (store_text).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"

namespace foreshore::observe {

// Version of the table layout, kept in PRAGMA user_version.
inline constexpr int kAuditSchemaVersion = 1;

struct AuditRecord {
  int64_t time_ms = 0;  // Unix epoch milliseconds; 0 = stamped when submitted
  std::string request_id;
  std::string decision_id;
  std::string policy;     // threshold, cascade, consistency, optimize, ...
  std::string plan_kind;  // edge, cloud, cascade, consistency, reject
  std::string tier;       // tier that produced the answer; empty when none did
  std::string placement;  // "device" or "cloud": the tier's placement; empty when none
  std::string model;
  std::string model_version;
  std::string data_class;  // public, prefer-local, contractual, device-only
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  double cost_usd = 0.0;  // what the request actually cost, over every tier it ran on
  // What the same tokens would have cost on the cloud reference tier; the
  // report's "cost saved" is the sum of these minus the sum of cost_usd.
  double cloud_cost_usd = 0.0;
  std::optional<double> ttft_ms;  // unset when no token was produced
  double total_ms = 0.0;
  std::optional<double> confidence;
  std::string outcome;  // ok, degraded, escalated, fallback or error:<kind>
  int http_status = 0;
  bool escalated = false;
  bool degraded = false;
  // Always hashed; stored verbatim only with AuditOptions::store_text.
  std::string prompt_text;
};

struct AuditOptions {
  std::string path;         // SQLite file, created with its schema on first open
  bool store_text = false;  // keep prompt text next to its hash
  size_t queue_capacity = 10000;
  // Queued prompt text is bounded too, so large prompts cannot pile up memory.
  size_t queue_max_bytes = 64u << 20;
  size_t batch_size = 512;  // most rows per transaction
  int busy_timeout_ms = 5000;
  // Retention: rows beyond the newest max_rows, and rows older than max_age,
  // are deleted every retention_interval (0 disables that limit).
  int64_t max_rows = 0;
  std::chrono::seconds max_age{0};
  std::chrono::milliseconds retention_interval{std::chrono::minutes(1)};
  // Called from the writer thread when a batch or a retention pass fails.
  std::function<void(const std::string& message)> on_error{};
};

struct AuditStats {
  uint64_t submitted = 0;     // accepted into the queue
  uint64_t dropped = 0;       // refused: queue full (count or bytes) or store closed
  uint64_t written = 0;       // rows committed
  uint64_t write_errors = 0;  // rows lost because their transaction failed
  uint64_t deleted_by_retention = 0;
  size_t queued = 0;
  std::string last_error;
};

class AuditStore {
 public:
  // Opens (creating if needed) the database, switches it to WAL and checks the
  // schema version, then starts the writer thread.
  static Result<std::unique_ptr<AuditStore>> open(AuditOptions options);
  ~AuditStore();  // writes everything queued, then stops the writer
  AuditStore(const AuditStore&) = delete;
  AuditStore& operator=(const AuditStore&) = delete;

  // Never blocks on the database; false when the record was dropped.
  bool submit(AuditRecord record);
  // Returns once every record submitted before the call is written (or failed).
  void flush();
  // Runs a retention pass now and waits for it (retention otherwise runs on its timer).
  void enforce_retention();
  AuditStats stats() const;
  uint64_t dropped() const;
  const AuditOptions& options() const;

 private:
  struct Impl;
  explicit AuditStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace foreshore::observe
