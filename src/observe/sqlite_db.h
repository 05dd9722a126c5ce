// Internal to observe/: thin RAII over the SQLite C API shared by the audit
// writer and the report reader, so both open and check the file the same way.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/result.h"

namespace foreshore::observe::detail {

struct SqliteCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
struct StmtFinalizer {
  void operator()(sqlite3_stmt* stmt) const { sqlite3_finalize(stmt); }
};
using DbPtr = std::unique_ptr<sqlite3, SqliteCloser>;
using StmtPtr = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

// Opens the audit database at `path` and verifies its schema version:
// writable opens create the file and the table when missing and switch to WAL;
// read-only opens fail unless the file already is a Foreshore audit store.
Result<DbPtr> open_audit_db(const std::string& path, bool writable, int busy_timeout_ms);

Status exec(sqlite3* db, std::string_view sql, std::string_view what);
Result<StmtPtr> prepare(sqlite3* db, std::string_view sql);
// "what: SQLite message (code)" for the connection's latest error.
Error db_error(sqlite3* db, std::string_view what);

}  // namespace foreshore::observe::detail
