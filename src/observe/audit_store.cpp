#include "observe/audit_store.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "common/sha256.h"
#include "observe/sqlite_db.h"

namespace foreshore::observe {
namespace {

using detail::StmtPtr;

constexpr std::string_view kInsert =
    "INSERT INTO requests (ts_ms, request_id, decision_id, policy, plan_kind, tier, placement, "
    "model, model_version, data_class, prompt_tokens, completion_tokens, cost_usd, "
    "cloud_cost_usd, ttft_ms, total_ms, confidence, outcome, http_status, escalated, degraded, "
    "prompt_sha256, prompt_text) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, "
    "?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)";

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void bind_text(sqlite3_stmt* stmt, int index, const std::string& text) {
  sqlite3_bind_text(stmt, index, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
}

void bind_optional(sqlite3_stmt* stmt, int index, const std::optional<double>& value) {
  if (value) {
    sqlite3_bind_double(stmt, index, *value);
  } else {
    sqlite3_bind_null(stmt, index);
  }
}

}  // namespace

struct AuditStore::Impl {
  AuditOptions options;
  detail::DbPtr db;
  StmtPtr insert;

  mutable std::mutex mu;
  std::condition_variable wake;  // writer: work, a retention request or stop
  std::condition_variable done;  // flush()/enforce_retention() waiters
  std::deque<AuditRecord> queue;
  size_t queued_bytes = 0;
  uint64_t accepted = 0;   // sequence number of the latest accepted record
  uint64_t processed = 0;  // records written or failed, in order
  uint64_t retention_requests = 0;
  uint64_t retention_runs = 0;
  bool stopping = false;
  AuditStats stats;
  std::thread writer;

  void report_error(const Error& error) {
    {
      std::lock_guard lock(mu);
      stats.last_error = error.message;
    }
    if (options.on_error) options.on_error(error.message);
  }

  Status write_batch(std::vector<AuditRecord>& batch) {
    sqlite3* conn = db.get();
    FSH_TRY_STATUS(detail::exec(conn, "BEGIN IMMEDIATE", "audit store " + options.path));
    sqlite3_stmt* stmt = insert.get();
    for (const AuditRecord& r : batch) {
      sqlite3_reset(stmt);
      sqlite3_clear_bindings(stmt);
      sqlite3_bind_int64(stmt, 1, r.time_ms);
      bind_text(stmt, 2, r.request_id);
      bind_text(stmt, 3, r.decision_id);
      bind_text(stmt, 4, r.policy);
      bind_text(stmt, 5, r.plan_kind);
      bind_text(stmt, 6, r.tier);
      bind_text(stmt, 7, r.placement);
      bind_text(stmt, 8, r.model);
      bind_text(stmt, 9, r.model_version);
      bind_text(stmt, 10, r.data_class);
      sqlite3_bind_int64(stmt, 11, r.prompt_tokens);
      sqlite3_bind_int64(stmt, 12, r.completion_tokens);
      sqlite3_bind_double(stmt, 13, r.cost_usd);
      sqlite3_bind_double(stmt, 14, r.cloud_cost_usd);
      bind_optional(stmt, 15, r.ttft_ms);
      sqlite3_bind_double(stmt, 16, r.total_ms);
      bind_optional(stmt, 17, r.confidence);
      bind_text(stmt, 18, r.outcome);
      sqlite3_bind_int(stmt, 19, r.http_status);
      sqlite3_bind_int(stmt, 20, r.escalated ? 1 : 0);
      sqlite3_bind_int(stmt, 21, r.degraded ? 1 : 0);
      // Hashing here rather than in submit() keeps it off the request path.
      bind_text(stmt, 22, sha256_hex(r.prompt_text));
      if (options.store_text) {
        bind_text(stmt, 23, r.prompt_text);
      } else {
        sqlite3_bind_null(stmt, 23);
      }
      if (sqlite3_step(stmt) != SQLITE_DONE) {
        Error error = detail::db_error(conn, "writing audit rows to " + options.path);
        sqlite3_reset(stmt);
        (void)detail::exec(conn, "ROLLBACK", "rollback");
        return error;
      }
    }
    sqlite3_reset(stmt);
    const Status committed =
        detail::exec(conn, "COMMIT", "committing audit rows to " + options.path);
    if (!committed.ok()) (void)detail::exec(conn, "ROLLBACK", "rollback");
    return committed;
  }

  Result<int64_t> apply_retention() {
    sqlite3* conn = db.get();
    int64_t deleted = 0;
    if (options.max_age.count() > 0) {
      FSH_ASSIGN_OR_RETURN(StmtPtr stmt,
                           detail::prepare(conn, "DELETE FROM requests WHERE ts_ms < ?1"));
      const int64_t cutoff =
          now_ms() - std::chrono::duration_cast<std::chrono::milliseconds>(options.max_age).count();
      sqlite3_bind_int64(stmt.get(), 1, cutoff);
      if (sqlite3_step(stmt.get()) != SQLITE_DONE) {
        return detail::db_error(conn, "deleting audit rows older than max_age in " + options.path);
      }
      deleted += sqlite3_changes(conn);
    }
    if (options.max_rows > 0) {
      // Row ids grow with insertion, so the newest max_rows are the largest ids.
      FSH_ASSIGN_OR_RETURN(
          StmtPtr stmt,
          detail::prepare(conn,
                          "DELETE FROM requests WHERE id <= (SELECT id FROM requests ORDER BY id "
                          "DESC LIMIT 1 OFFSET ?1)"));
      sqlite3_bind_int64(stmt.get(), 1, options.max_rows);
      if (sqlite3_step(stmt.get()) != SQLITE_DONE) {
        return detail::db_error(conn, "deleting audit rows beyond max_rows in " + options.path);
      }
      deleted += sqlite3_changes(conn);
    }
    return deleted;
  }

  void run() {
    using Clock = std::chrono::steady_clock;
    const bool retention_enabled = options.max_rows > 0 || options.max_age.count() > 0;
    auto next_retention = Clock::now() + options.retention_interval;
    std::vector<AuditRecord> batch;
    batch.reserve(options.batch_size);
    std::unique_lock lock(mu);
    for (;;) {
      const auto ready = [&] {
        return !queue.empty() || stopping || retention_requests > retention_runs;
      };
      if (retention_enabled) {
        wake.wait_until(lock, next_retention, ready);
      } else {
        wake.wait(lock, ready);
      }
      while (!queue.empty() && batch.size() < options.batch_size) {
        queued_bytes -= queue.front().prompt_text.size();
        batch.push_back(std::move(queue.front()));
        queue.pop_front();
      }
      const uint64_t wanted_runs = retention_requests;
      const bool retention_due =
          wanted_runs > retention_runs || (retention_enabled && Clock::now() >= next_retention);
      lock.unlock();

      if (!batch.empty()) {
        const Status written = write_batch(batch);
        if (!written.ok()) report_error(written.error());
        lock.lock();
        (written.ok() ? stats.written : stats.write_errors) += batch.size();
        processed += batch.size();
        lock.unlock();
        batch.clear();
      }
      int64_t deleted = 0;
      if (retention_due) {
        if (retention_enabled) {
          Result<int64_t> result = apply_retention();
          if (result.ok()) {
            deleted = *result;
          } else {
            report_error(result.error());
          }
        }
        next_retention = Clock::now() + options.retention_interval;
      }

      lock.lock();
      stats.deleted_by_retention += static_cast<uint64_t>(deleted);
      if (retention_due) retention_runs = wanted_runs;
      done.notify_all();
      if (stopping && queue.empty()) return;
    }
  }
};

AuditStore::AuditStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<AuditStore>> AuditStore::open(AuditOptions options) {
  if (options.queue_capacity == 0 || options.batch_size == 0) {
    return make_error(
        ErrorKind::kInvalidArgument,
        "audit store " + options.path + ": queue_capacity and batch_size must be at least 1");
  }
  if (options.max_rows < 0 || options.max_age.count() < 0 ||
      options.retention_interval.count() <= 0) {
    return make_error(ErrorKind::kInvalidArgument,
                      "audit store " + options.path +
                          ": max_rows and max_age must be >= 0 (0 = unlimited) and "
                          "retention_interval > 0");
  }
  auto impl = std::make_unique<Impl>();
  FSH_ASSIGN_OR_RETURN(
      impl->db, detail::open_audit_db(options.path, /*writable=*/true, options.busy_timeout_ms));
  FSH_ASSIGN_OR_RETURN(impl->insert, detail::prepare(impl->db.get(), kInsert));
  impl->options = std::move(options);
  Impl* raw = impl.get();
  impl->writer = std::thread([raw] { raw->run(); });
  return std::unique_ptr<AuditStore>(new AuditStore(std::move(impl)));
}

AuditStore::~AuditStore() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->wake.notify_one();
  impl_->writer.join();
}

bool AuditStore::submit(AuditRecord record) {
  if (record.time_ms == 0) record.time_ms = now_ms();
  Impl& s = *impl_;
  {
    std::lock_guard lock(s.mu);
    const size_t bytes = record.prompt_text.size();
    // An empty queue takes any one record, however large, so a huge prompt is
    // still audited rather than always refused.
    if (s.stopping || s.queue.size() >= s.options.queue_capacity ||
        (!s.queue.empty() && s.queued_bytes + bytes > s.options.queue_max_bytes)) {
      ++s.stats.dropped;
      return false;
    }
    s.queued_bytes += bytes;
    s.queue.push_back(std::move(record));
    ++s.accepted;
    ++s.stats.submitted;
  }
  s.wake.notify_one();
  return true;
}

void AuditStore::flush() {
  Impl& s = *impl_;
  std::unique_lock lock(s.mu);
  const uint64_t target = s.accepted;
  s.wake.notify_one();
  s.done.wait(lock, [&] { return s.processed >= target; });
}

void AuditStore::enforce_retention() {
  flush();
  Impl& s = *impl_;
  std::unique_lock lock(s.mu);
  const uint64_t target = ++s.retention_requests;
  s.wake.notify_one();
  s.done.wait(lock, [&] { return s.retention_runs >= target; });
}

AuditStats AuditStore::stats() const {
  std::lock_guard lock(impl_->mu);
  AuditStats out = impl_->stats;
  out.queued = impl_->queue.size();
  return out;
}

uint64_t AuditStore::dropped() const {
  std::lock_guard lock(impl_->mu);
  return impl_->stats.dropped;
}

const AuditOptions& AuditStore::options() const {
  return impl_->options;
}

}  // namespace foreshore::observe
