// The audit trail of several gateway replicas in one PostgreSQL database.
// Records are queued on the request path and written by a background thread
// in batches (one transaction each); every replica inserts on its own, and a
// request id is unique, so inserts never conflict and never wait on each
// other's locks. While PostgreSQL cannot be reached, batches go to a local
// spool file (JSON lines) and are replayed first once it answers again;
// ON CONFLICT (request_id) DO NOTHING makes a replay that was cut short and
// repeated write nothing twice.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "common/result.h"
#include "observe/audit_store.h"

namespace foreshore::observe {

struct PgAuditOptions {
  std::string conninfo;     // libpq connection string or postgresql:// URL
  std::string spool_path;   // where batches wait while PostgreSQL is down
  bool store_text = false;  // keep prompt text next to its hash
  size_t batch_size = 500;  // most rows per transaction
  std::chrono::milliseconds flush_interval{200};
  std::chrono::milliseconds retry_interval{1000};    // while down, how often to try again
  std::function<void(const std::string&)> on_error;  // logged, never thrown
};

class PgAuditSink {
 public:
  // Checks the options; PostgreSQL need not be up yet (records spool until it is).
  static Result<std::unique_ptr<PgAuditSink>> open(PgAuditOptions options);
  ~PgAuditSink();  // writes (or spools) what is queued
  PgAuditSink(const PgAuditSink&) = delete;
  PgAuditSink& operator=(const PgAuditSink&) = delete;

  // Never blocks on the database.
  void submit(AuditRecord record);

  bool connected() const { return connected_; }
  uint64_t written() const { return written_; }  // rows PostgreSQL took (replays included)
  uint64_t spooled() const { return spooled_; }  // rows that went to the spool file

 private:
  explicit PgAuditSink(PgAuditOptions options);
  void run();
  // Writes rows; false (nothing committed) when the database failed.
  bool write(const std::deque<std::string>& rows);
  bool replay_spool();
  void spool(const std::deque<std::string>& rows);
  bool connect();
  void disconnect();

  PgAuditOptions options_;
  void* conn_ = nullptr;  // PGconn*, kept out of this header
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::string> queue_;  // records as JSON, the spool file's format
  bool stopping_ = false;
  std::atomic<bool> connected_{false};
  std::atomic<uint64_t> written_{0};
  std::atomic<uint64_t> spooled_{0};
  std::chrono::steady_clock::time_point next_try_{};
  bool logged_down_ = false;  // the writer thread said PostgreSQL is down
  std::thread thread_;
};

// Where a libpq connection string points, for messages and reports, with
// no password: "postgresql://USER@HOST:PORT/DB" (parts it leaves out, too).
std::string describe_conninfo(const std::string& conninfo);

// Every row of a PostgreSQL audit table copied into a SQLite audit store at
// `sqlite_path` (created), so that `foreshore report` reads either.
Status copy_pg_audit_to_sqlite(const std::string& conninfo, const std::string& sqlite_path);

}  // namespace foreshore::observe
