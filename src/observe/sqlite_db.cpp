#include "observe/sqlite_db.h"

#include <string>

#include "observe/audit_store.h"

namespace foreshore::observe::detail {
namespace {

constexpr std::string_view kSchema = R"sql(
CREATE TABLE IF NOT EXISTS requests (
  id INTEGER PRIMARY KEY,
  ts_ms INTEGER NOT NULL,
  request_id TEXT NOT NULL,
  decision_id TEXT NOT NULL,
  policy TEXT NOT NULL,
  plan_kind TEXT NOT NULL,
  tier TEXT NOT NULL,
  placement TEXT NOT NULL,
  model TEXT NOT NULL,
  model_version TEXT NOT NULL,
  data_class TEXT NOT NULL,
  prompt_tokens INTEGER NOT NULL,
  completion_tokens INTEGER NOT NULL,
  cost_usd REAL NOT NULL,
  cloud_cost_usd REAL NOT NULL,
  ttft_ms REAL,
  total_ms REAL NOT NULL,
  confidence REAL,
  outcome TEXT NOT NULL,
  http_status INTEGER NOT NULL,
  escalated INTEGER NOT NULL,
  degraded INTEGER NOT NULL,
  prompt_sha256 TEXT NOT NULL,
  prompt_text TEXT
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests(ts_ms);
)sql";

Error open_error(sqlite3* db, const std::string& path, int rc) {
  const std::string detail = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  if (rc == SQLITE_NOTADB || rc == SQLITE_CORRUPT) {
    return make_error(ErrorKind::kCorrupt,
                      "audit store " + path + " is not a readable SQLite database (" + detail +
                          "); move the file aside or point the audit path at another file");
  }
  if (rc == SQLITE_CANTOPEN) {
    return make_error(ErrorKind::kNotFound,
                      "cannot open audit store " + path + " (" + detail +
                          "); check that the file (or, to create it, its folder) exists and "
                          "is readable and writable");
  }
  return make_error(ErrorKind::kIo, "audit store " + path + ": " + detail + " (SQLite code " +
                                        std::to_string(rc) + ")");
}

Result<int> read_user_version(sqlite3* db, const std::string& path) {
  sqlite3_stmt* raw = nullptr;
  int rc = sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &raw, nullptr);
  StmtPtr stmt(raw);
  if (rc == SQLITE_OK) rc = sqlite3_step(stmt.get());
  if (rc != SQLITE_ROW) return open_error(db, path, rc);
  return sqlite3_column_int(stmt.get(), 0);
}

Status check_version(int version, const std::string& path, bool writable) {
  if (version > kAuditSchemaVersion) {
    return make_error(ErrorKind::kUnsupported,
                      "audit store " + path + " has schema version " + std::to_string(version) +
                          ", newer than the " + std::to_string(kAuditSchemaVersion) +
                          " this build knows; use a newer foreshore or another file");
  }
  if (version == 0 && !writable) {
    return make_error(ErrorKind::kInvalidArgument,
                      "audit store " + path +
                          " is a SQLite file without a Foreshore audit schema; pass the file "
                          "the server writes (config key server.audit_db)");
  }
  return Status::Ok();
}

}  // namespace

Error db_error(sqlite3* db, std::string_view what) {
  const int rc = sqlite3_extended_errcode(db);
  return make_error(
      rc == SQLITE_CORRUPT || rc == SQLITE_NOTADB ? ErrorKind::kCorrupt : ErrorKind::kIo,
      std::string(what) + ": " + sqlite3_errmsg(db) + " (SQLite code " + std::to_string(rc) + ")");
}

Status exec(sqlite3* db, std::string_view sql, std::string_view what) {
  const std::string text(sql);
  if (sqlite3_exec(db, text.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) {
    return db_error(db, what);
  }
  return Status::Ok();
}

Result<StmtPtr> prepare(sqlite3* db, std::string_view sql) {
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db, sql.data(), static_cast<int>(sql.size()), &raw, nullptr) !=
      SQLITE_OK) {
    return db_error(db, "preparing \"" + std::string(sql.substr(0, 60)) + "\"");
  }
  return StmtPtr(raw);
}

Result<DbPtr> open_audit_db(const std::string& path, bool writable, int busy_timeout_ms) {
  if (path.empty()) {
    return make_error(ErrorKind::kInvalidArgument,
                      "audit store path is empty; set the file the audit rows go to");
  }
  sqlite3* raw = nullptr;
  const int flags = (writable ? SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE : SQLITE_OPEN_READONLY) |
                    SQLITE_OPEN_NOMUTEX;
  const int rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
  DbPtr db(raw);
  if (rc != SQLITE_OK) return open_error(db.get(), path, rc);
  sqlite3_extended_result_codes(db.get(), 1);
  sqlite3_busy_timeout(db.get(), busy_timeout_ms);

  // The first read is where SQLite notices a file that is not a database.
  FSH_ASSIGN_OR_RETURN(const int version, read_user_version(db.get(), path));
  FSH_TRY_STATUS(check_version(version, path, writable));
  if (!writable) return db;

  {
    FSH_ASSIGN_OR_RETURN(StmtPtr wal, prepare(db.get(), "PRAGMA journal_mode=WAL"));
    const int step = sqlite3_step(wal.get());
    if (step != SQLITE_ROW) return open_error(db.get(), path, step);
    const auto* mode = reinterpret_cast<const char*>(sqlite3_column_text(wal.get(), 0));
    if (mode == nullptr || std::string_view(mode) != "wal") {
      return make_error(ErrorKind::kUnsupported,
                        "audit store " + path + " cannot use WAL journaling (SQLite kept \"" +
                            (mode ? mode : "?") +
                            "\"); put the file on a local file system that supports it");
    }
  }
  FSH_TRY_STATUS(exec(db.get(), "PRAGMA synchronous=NORMAL", "audit store " + path));
  if (version == 0) {
    const std::string create = "BEGIN IMMEDIATE;" + std::string(kSchema) +
                               "PRAGMA user_version=" + std::to_string(kAuditSchemaVersion) +
                               ";COMMIT;";
    const Status created = exec(db.get(), create, "creating the schema of audit store " + path);
    if (!created.ok()) {
      (void)exec(db.get(), "ROLLBACK", "rollback");
      return created.error();
    }
  }
  return db;
}

}  // namespace foreshore::observe::detail
