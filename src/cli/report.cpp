// `foreshore report`: summarize the audit store a server writes.
#include "observe/report.h"

#include <unistd.h>

#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/commands.h"
#include "observe/pg_audit.h"

namespace foreshore::cli {
namespace {

struct ReportFlags {
  std::string db;
  std::string postgres;
  std::string since;
  bool json = false;
};

int run_report(const ReportFlags& flags) {
  observe::ReportOptions options;
  if (!flags.since.empty()) {
    auto since = observe::parse_duration(flags.since);
    if (!since.ok()) return fail(since.error());
    options.since = *since;
  }
  // A PostgreSQL trail is copied into a private SQLite file, which the same
  // report then reads.
  std::string db = flags.db;
  std::string copied;
  if (!flags.postgres.empty()) {
    char folder[] = "/tmp/foreshore-report-XXXXXX";
    if (::mkdtemp(folder) == nullptr) {
      return fail(make_error(ErrorKind::kIo,
                             "cannot make a temporary folder in /tmp for the "
                             "report's copy of the PostgreSQL audit rows"));
    }
    copied = folder;
    db = copied + "/audit.sqlite";
    if (auto s = observe::copy_pg_audit_to_sqlite(flags.postgres, db); !s.ok()) {
      std::filesystem::remove_all(copied);
      return fail(s.error());
    }
  } else if (flags.db.empty()) {
    return fail(make_error(ErrorKind::kInvalidArgument,
                           "report needs --db FILE (SQLite) or --postgres CONNINFO"));
  }
  const auto cleanup = [&] {
    if (!copied.empty()) std::filesystem::remove_all(copied);
  };
  // SQLite reports a missing file only as "unable to open"; name it instead.
  if (!std::filesystem::exists(db)) {
    return fail(make_error(
        ErrorKind::kNotFound,
        "audit store " + flags.db +
            " does not exist; pass the file the server writes (config key server.audit_db)"));
  }
  auto report = observe::build_report(db, options);
  cleanup();
  if (!report.ok()) return fail(report.error());
  // The copy is gone: the report names where its rows came from.
  if (!copied.empty()) report->db_path = observe::describe_conninfo(flags.postgres);
  if (flags.json) {
    std::cout << observe::report_to_json(*report).dump(2) << "\n";
  } else {
    std::cout << observe::format_report(*report);
  }
  return 0;
}

}  // namespace

void add_report_command(CLI::App& app) {
  auto flags = std::make_shared<ReportFlags>();
  CLI::App* cmd = app.add_subcommand(
      "report",
      "Summarize the audit store: cost against cloud-only, cloud share, latency percentiles "
      "per tier, escalation, degradation and error rates, per data class");
  cmd->add_option("--db", flags->db,
                  "Audit store (SQLite file) the server writes (config key server.audit_db)");
  cmd->add_option("--postgres", flags->postgres,
                  "Or the PostgreSQL audit trail replicas write (server.audit_postgres), as a "
                  "libpq connection string");
  cmd->add_option("--since", flags->since,
                  "Only requests newer than this: 90s, 30m, 24h, 7d, 2w (default: all rows)");
  cmd->add_flag("--json", flags->json, "Print JSON instead of tables");
  cmd->footer("Example:\n  foreshore report --db audit.db --since 24h");
  on_run(cmd, [flags] { return run_report(*flags); });
}

}  // namespace foreshore::cli
