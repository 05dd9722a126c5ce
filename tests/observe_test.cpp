// observe/: the audit store on real SQLite files, the report on rows whose
// figures are worked out by hand, the memory pressure monitor on fake /proc
// and cgroup files, the version registry, and the shadow sampler's guarantees.
#include "observe/observe.h"

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <thread>

#include "observe/metrics.h"
#include "observe/pg_audit.h"
#include "support/process.h"
#include "support/shared_servers.h"
#include "support/test_paths.h"

namespace foreshore::observe {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

// A temporary folder removed with its contents at the end of the test.
class TempDir {
 public:
  TempDir() : path_(foreshore::testing::temp_path("-observe")) { fs::create_directories(path_); }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (fs::path(path_) / name).string(); }
  void write(const std::string& name, const std::string& text) const {
    const fs::path p = fs::path(path_) / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary | std::ios::trunc) << text;
  }
  void remove(const std::string& name) const { fs::remove(fs::path(path_) / name); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A second connection to the same file, as an operator's sqlite3 shell would be.
class Db {
 public:
  explicit Db(const std::string& path) { EXPECT_EQ(sqlite3_open(path.c_str(), &db_), SQLITE_OK); }
  ~Db() { sqlite3_close(db_); }
  void exec(const std::string& sql) {
    EXPECT_EQ(sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK)
        << sql << ": " << sqlite3_errmsg(db_);
  }
  // First column of the first row, as text ("NULL" for null, "" for no row).
  std::string scalar(const std::string& sql) {
    sqlite3_stmt* stmt = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db_, sql.c_str(), -1, &stmt, nullptr), SQLITE_OK)
        << sql << ": " << sqlite3_errmsg(db_);
    std::string out;
    if (sqlite3_step(stmt) == SQLITE_ROW) {
      const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
      out = text ? text : "NULL";
    }
    sqlite3_finalize(stmt);
    return out;
  }
  int64_t count(const std::string& where = "1") {
    return std::stoll(scalar("SELECT COUNT(*) FROM requests WHERE " + where));
  }

 private:
  sqlite3* db_ = nullptr;
};

AuditRecord record(const std::string& id) {
  AuditRecord r;
  r.request_id = id;
  r.decision_id = "d-" + id;
  r.policy = "cascade";
  r.plan_kind = "cascade";
  r.tier = "edge";
  r.placement = "device";
  r.model = "stories260K";
  r.model_version = "sha256:abc";
  r.data_class = "public";
  r.outcome = "ok";
  r.http_status = 200;
  r.prompt_text = "hello";
  return r;
}

std::unique_ptr<AuditStore> open_store(AuditOptions options) {
  auto store = AuditStore::open(std::move(options));
  EXPECT_TRUE(store.ok()) << store.error().message;
  return store.ok() ? std::move(store).value() : nullptr;
}

// ---------------------------------------------------------------- audit store

TEST(AuditStoreTest, RoundTripInWalModeWithHashNotText) {
  TempDir dir;
  const std::string path = dir.file("audit.db");
  {
    auto store = open_store({.path = path});
    ASSERT_TRUE(store);
    AuditRecord r = record("r1");
    r.time_ms = 1700000000123;
    r.prompt_tokens = 12;
    r.completion_tokens = 34;
    r.cost_usd = 0.0012;
    r.cloud_cost_usd = 0.0456;
    r.ttft_ms = 12.5;
    r.total_ms = 99.5;
    r.confidence = 0.87;
    r.escalated = true;
    r.outcome = "escalated";
    EXPECT_TRUE(store->submit(r));
    AuditRecord failed = record("r2");
    failed.outcome = "error:unavailable";
    failed.http_status = 503;
    EXPECT_TRUE(store->submit(failed));
    store->flush();
    EXPECT_EQ(store->stats().written, 2u);
    EXPECT_EQ(store->stats().dropped, 0u);
  }
  Db db(path);
  EXPECT_EQ(db.scalar("PRAGMA journal_mode"), "wal");
  EXPECT_EQ(db.scalar("PRAGMA user_version"), std::to_string(kAuditSchemaVersion));
  EXPECT_EQ(db.count(), 2);
  const std::string row = "FROM requests WHERE request_id = 'r1'";
  EXPECT_EQ(db.scalar("SELECT ts_ms " + row), "1700000000123");
  EXPECT_EQ(db.scalar("SELECT decision_id || '|' || policy || '|' || plan_kind || '|' || tier || "
                      "'|' || placement || '|' || model || '|' || model_version || '|' || "
                      "data_class || '|' || outcome " +
                      row),
            "d-r1|cascade|cascade|edge|device|stories260K|sha256:abc|public|escalated");
  EXPECT_EQ(db.scalar("SELECT prompt_tokens || ',' || completion_tokens || ',' || http_status || "
                      "',' || escalated || ',' || degraded " +
                      row),
            "12,34,200,1,0");
  EXPECT_DOUBLE_EQ(std::stod(db.scalar("SELECT cost_usd " + row)), 0.0012);
  EXPECT_DOUBLE_EQ(std::stod(db.scalar("SELECT cloud_cost_usd " + row)), 0.0456);
  EXPECT_DOUBLE_EQ(std::stod(db.scalar("SELECT ttft_ms " + row)), 12.5);
  EXPECT_DOUBLE_EQ(std::stod(db.scalar("SELECT confidence " + row)), 0.87);
  // SHA-256("hello"), and no text unless configured.
  EXPECT_EQ(db.scalar("SELECT prompt_sha256 " + row),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
  EXPECT_EQ(db.scalar("SELECT prompt_text " + row), "NULL");
  EXPECT_EQ(db.scalar("SELECT ttft_ms FROM requests WHERE request_id = 'r2'"), "NULL");
  EXPECT_EQ(db.scalar("SELECT confidence FROM requests WHERE request_id = 'r2'"), "NULL");
  EXPECT_EQ(db.scalar("SELECT outcome FROM requests WHERE request_id = 'r2'"), "error:unavailable");
}

TEST(AuditStoreTest, StoresTextOnlyWhenConfiguredAndReopensExistingFile) {
  TempDir dir;
  const std::string path = dir.file("audit.db");
  {
    auto store = open_store({.path = path});
    ASSERT_TRUE(store);
    EXPECT_TRUE(store->submit(record("hashed")));
  }
  {
    auto store = open_store({.path = path, .store_text = true});
    ASSERT_TRUE(store);
    EXPECT_TRUE(store->submit(record("kept")));
  }
  Db db(path);
  EXPECT_EQ(db.count(), 2);
  EXPECT_EQ(db.scalar("SELECT prompt_text FROM requests WHERE request_id = 'hashed'"), "NULL");
  EXPECT_EQ(db.scalar("SELECT prompt_text FROM requests WHERE request_id = 'kept'"), "hello");
}

TEST(AuditStoreTest, ShutdownWritesEverythingQueued) {
  TempDir dir;
  const std::string path = dir.file("audit.db");
  {
    auto store = open_store({.path = path, .batch_size = 7});
    ASSERT_TRUE(store);
    for (int i = 0; i < 500; ++i) EXPECT_TRUE(store->submit(record("r" + std::to_string(i))));
  }
  EXPECT_EQ(Db(path).count(), 500);
}

TEST(AuditStoreTest, ClearErrorsForCorruptMissingAndNewerFiles) {
  TempDir dir;
  dir.write("garbage.db", std::string(4096, 'x'));
  auto corrupt = AuditStore::open({.path = dir.file("garbage.db")});
  ASSERT_FALSE(corrupt.ok());
  EXPECT_EQ(corrupt.error().kind, ErrorKind::kCorrupt);
  EXPECT_NE(corrupt.error().message.find(dir.file("garbage.db")), std::string::npos);
  EXPECT_NE(corrupt.error().message.find("move the file aside"), std::string::npos);

  auto missing = AuditStore::open({.path = dir.file("no/such/folder/audit.db")});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().kind, ErrorKind::kNotFound);
  EXPECT_NE(missing.error().message.find("no/such/folder/audit.db"), std::string::npos);

  {
    Db newer(dir.file("newer.db"));
    newer.exec("PRAGMA user_version = 99");
  }
  auto newer = AuditStore::open({.path = dir.file("newer.db")});
  ASSERT_FALSE(newer.ok());
  EXPECT_EQ(newer.error().kind, ErrorKind::kUnsupported);
  EXPECT_NE(newer.error().message.find("schema version 99"), std::string::npos);

  auto bad_report = build_report(dir.file("garbage.db"));
  ASSERT_FALSE(bad_report.ok());
  EXPECT_EQ(bad_report.error().kind, ErrorKind::kCorrupt);
}

TEST(AuditStoreTest, RetentionKeepsNewestRowsAndDropsOldOnes) {
  TempDir dir;
  const std::string path = dir.file("audit.db");
  auto store = open_store({.path = path, .max_rows = 5, .retention_interval = 1h});
  ASSERT_TRUE(store);
  for (int i = 0; i < 12; ++i) EXPECT_TRUE(store->submit(record("r" + std::to_string(i))));
  store->flush();
  Db db(path);
  // Not enforced on insert: the timer is an hour away.
  EXPECT_EQ(db.count(), 12);
  store->enforce_retention();
  EXPECT_EQ(db.count(), 5);
  EXPECT_EQ(db.count("request_id IN ('r7', 'r8', 'r9', 'r10', 'r11')"), 5);
  EXPECT_EQ(store->stats().deleted_by_retention, 7u);

  const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  auto by_age = open_store({.path = dir.file("age.db"), .max_age = 1h});
  ASSERT_TRUE(by_age);
  AuditRecord old = record("old");
  old.time_ms = now - 2 * 3600 * 1000;
  AuditRecord fresh = record("fresh");
  fresh.time_ms = now - 60 * 1000;
  EXPECT_TRUE(by_age->submit(old));
  EXPECT_TRUE(by_age->submit(fresh));
  by_age->enforce_retention();
  Db age_db(dir.file("age.db"));
  EXPECT_EQ(age_db.count(), 1);
  EXPECT_EQ(age_db.count("request_id = 'fresh'"), 1);
}

TEST(AuditStoreTest, RetentionRunsPeriodicallyOnItsOwn) {
  TempDir dir;
  const std::string path = dir.file("audit.db");
  auto store = open_store({.path = path, .max_rows = 3, .retention_interval = 20ms});
  ASSERT_TRUE(store);
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(store->submit(record("r" + std::to_string(i))));
  store->flush();
  Db db(path);
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (db.count() != 3 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(db.count(), 3);
}

TEST(AuditStoreTest, FullQueueDropsAndCountsWithoutBlocking) {
  TempDir dir;
  const std::string path = dir.file("audit.db");
  auto store = open_store({.path = path, .queue_capacity = 16, .batch_size = 4});
  ASSERT_TRUE(store);
  // Another writer holds the database, so the store's writer waits on its lock
  // (busy_timeout) after taking at most one batch off the queue.
  Db blocker(path);
  blocker.exec("BEGIN IMMEDIATE");
  const auto start = std::chrono::steady_clock::now();
  int accepted = 0;
  for (int i = 0; i < 100; ++i) accepted += store->submit(record("r" + std::to_string(i)));
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_LT(elapsed, 500ms);
  const AuditStats stats = store->stats();
  EXPECT_GE(accepted, 16);
  EXPECT_LE(accepted, 16 + 4);
  EXPECT_EQ(stats.submitted, static_cast<uint64_t>(accepted));
  EXPECT_EQ(stats.dropped, static_cast<uint64_t>(100 - accepted));
  EXPECT_EQ(store->dropped(), stats.dropped);

  blocker.exec("COMMIT");
  store->flush();
  EXPECT_EQ(Db(path).count(), accepted);
  EXPECT_EQ(store->stats().written, static_cast<uint64_t>(accepted));
}

TEST(AuditStoreTest, QueuedPromptBytesAreBounded) {
  TempDir dir;
  const std::string path = dir.file("audit.db");
  auto store = open_store({.path = path, .queue_max_bytes = 1000, .batch_size = 1});
  ASSERT_TRUE(store);
  Db blocker(path);
  blocker.exec("BEGIN IMMEDIATE");
  int accepted = 0;
  for (int i = 0; i < 20; ++i) {
    AuditRecord r = record("r" + std::to_string(i));
    r.prompt_text = std::string(400, 'p');
    accepted += store->submit(std::move(r));
  }
  // Two fit in 1000 bytes, plus the one the writer may hold.
  EXPECT_GE(accepted, 2);
  EXPECT_LE(accepted, 3);
  blocker.exec("COMMIT");
  store->flush();
  EXPECT_EQ(Db(path).count(), accepted);
}

// ---------------------------------------------------------------- report

constexpr int64_t kNow = 1700000000000;

AuditRecord row(const std::string& tier, const std::string& placement,
                const std::string& data_class, const std::string& outcome, double cost,
                double cloud_cost, std::optional<double> ttft, double total) {
  AuditRecord r = record(tier + outcome + std::to_string(total));
  r.time_ms = kNow - 3600 * 1000;
  r.tier = tier;
  r.placement = placement;
  r.data_class = data_class;
  r.outcome = outcome;
  r.cost_usd = cost;
  r.cloud_cost_usd = cloud_cost;
  r.ttft_ms = ttft;
  r.total_ms = total;
  r.escalated = outcome == "escalated";
  r.degraded = outcome == "degraded";
  return r;
}

std::string write_report_rows(const TempDir& dir) {
  const std::string path = dir.file("report.db");
  auto store = open_store({.path = path});
  EXPECT_TRUE(store);
  store->submit(row("edge", "device", "public", "ok", 0, 0.010, 10, 100));
  store->submit(row("edge", "device", "public", "ok", 0, 0.010, 20, 200));
  store->submit(row("edge", "device", "public", "degraded", 0, 0.010, 30, 300));
  store->submit(row("edge", "device", "prefer-local", "ok", 0, 0.010, 40, 400));
  store->submit(row("cloud", "cloud", "public", "ok", 0.020, 0.020, 50, 500));
  store->submit(row("cloud", "cloud", "public", "escalated", 0.030, 0.030, 60, 600));
  store->submit(row("", "", "public", "error:unavailable", 0, 0.010, std::nullopt, 5));
  AuditRecord old = row("cloud", "cloud", "public", "ok", 1.0, 1.0, 70, 700);
  old.time_ms = kNow - 48 * 3600 * 1000;
  store->submit(old);
  store->flush();
  return path;
}

TEST(ReportTest, FiguresMatchHandComputedValues) {
  TempDir dir;
  const std::string path = write_report_rows(dir);
  auto report = build_report(path, {.since = 24h, .now_ms = kNow});
  ASSERT_TRUE(report.ok()) << report.error().message;
  const GroupTotals& t = report->totals;
  EXPECT_EQ(t.requests, 7);
  EXPECT_NEAR(t.cost_usd, 0.05, 1e-12);
  EXPECT_NEAR(t.cloud_only_cost_usd, 0.10, 1e-12);
  // The degraded answer and the failure are no saving: 5 requests compared.
  EXPECT_EQ(t.compared_requests, 5);
  EXPECT_NEAR(t.compared_cloud_only_cost_usd, 0.08, 1e-12);
  EXPECT_NEAR(t.cost_saved_usd, 0.03, 1e-12);
  EXPECT_NEAR(t.cost_saved_pct, 37.5, 1e-9);
  EXPECT_EQ(t.degraded_requests, 1);
  EXPECT_NEAR(t.degraded_cloud_only_cost_usd, 0.01, 1e-12);
  EXPECT_EQ(t.failed_requests, 1);
  EXPECT_NEAR(t.cloud_share, 2.0 / 7, 1e-12);
  EXPECT_NEAR(t.escalation_rate, 1.0 / 7, 1e-12);
  EXPECT_NEAR(t.degradation_rate, 1.0 / 7, 1e-12);
  EXPECT_NEAR(t.error_rate, 1.0 / 7, 1e-12);

  ASSERT_EQ(report->tiers.size(), 3u);  // (none), cloud, edge
  EXPECT_EQ(report->tiers[0].tier, "(none)");
  EXPECT_EQ(report->tiers[0].ttft_ms.count, 0);  // failures carry no latency
  const TierReport& cloud = report->tiers[1];
  EXPECT_EQ(cloud.tier, "cloud");
  EXPECT_EQ(cloud.placement, "cloud");
  EXPECT_EQ(cloud.requests, 2);
  EXPECT_EQ(cloud.ttft_ms.p50, 50);
  EXPECT_EQ(cloud.ttft_ms.p95, 60);
  const TierReport& edge = report->tiers[2];
  EXPECT_EQ(edge.requests, 4);
  EXPECT_EQ(edge.ttft_ms.count, 4);
  EXPECT_EQ(edge.ttft_ms.p50, 20);  // nearest rank: ceil(0.5 * 4) = 2nd value
  EXPECT_EQ(edge.ttft_ms.p95, 40);
  EXPECT_EQ(edge.ttft_ms.p99, 40);
  EXPECT_EQ(edge.total_ms.p50, 200);

  ASSERT_EQ(report->data_classes.size(), 2u);
  EXPECT_EQ(report->data_classes[0].data_class, "prefer-local");
  EXPECT_EQ(report->data_classes[0].totals.requests, 1);
  EXPECT_NEAR(report->data_classes[0].totals.cost_saved_pct, 100.0, 1e-9);
  EXPECT_EQ(report->data_classes[1].data_class, "public");
  EXPECT_EQ(report->data_classes[1].totals.requests, 6);
  EXPECT_NEAR(report->data_classes[1].totals.cloud_only_cost_usd, 0.09, 1e-12);

  auto everything = build_report(path, {.now_ms = kNow});
  ASSERT_TRUE(everything.ok());
  EXPECT_EQ(everything->totals.requests, 8);
  EXPECT_NEAR(everything->totals.cost_usd, 1.05, 1e-12);

  const auto j = report_to_json(*report);
  EXPECT_EQ(j["totals"]["requests"], 7);
  EXPECT_NEAR(j["totals"]["cost_saved_pct"].get<double>(), 37.5, 1e-9);
  EXPECT_EQ(j["totals"]["degraded_requests"], 1);
  EXPECT_EQ(j["tiers"][2]["ttft_ms"]["p50"], 20.0);
  const std::string table = format_report(*report);
  EXPECT_NE(table.find("cost saved        $0.030000 (37.5 %) on 5 requests"), std::string::npos)
      << table;
  EXPECT_NE(table.find("not a saving      1 degraded"), std::string::npos) << table;
  EXPECT_NE(table.find("cloud share       28.6 %"), std::string::npos) << table;
}

// Device-only traffic could never have gone to the cloud, and a degraded
// answer is the cloud failing: "cost saved 100 %" for either would mislead.
TEST(ReportTest, DegradedAndDeviceOnlyRequestsAreNotSavings) {
  TempDir dir;
  const std::string path = dir.file("apart.db");
  {
    auto store = open_store({.path = path});
    ASSERT_TRUE(store);
    store->submit(row("edge", "device", "device-only", "ok", 0, 0.010, 10, 100));
    store->submit(row("edge", "device", "device-only", "ok", 0, 0.030, 10, 110));
    store->submit(row("edge", "device", "public", "degraded", 0, 0.020, 10, 120));
    store->submit(row("cloud", "cloud", "public", "ok", 0.040, 0.040, 50, 500));
  }
  auto report = build_report(path, {.now_ms = kNow});
  ASSERT_TRUE(report.ok()) << report.error().message;
  const GroupTotals& t = report->totals;
  EXPECT_EQ(t.requests, 4);
  EXPECT_EQ(t.compared_requests, 1);
  EXPECT_NEAR(t.cost_saved_usd, 0.0, 1e-12);
  EXPECT_NEAR(t.cost_saved_pct, 0.0, 1e-12);
  EXPECT_EQ(t.device_only_requests, 2);
  EXPECT_NEAR(t.device_only_cloud_only_cost_usd, 0.04, 1e-12);
  EXPECT_EQ(t.degraded_requests, 1);
  EXPECT_NEAR(t.degraded_cloud_only_cost_usd, 0.02, 1e-12);
  const std::string table = format_report(*report);
  EXPECT_NE(table.find("not a saving      1 degraded (cloud failed; $0.020000 on the cloud), 2 "
                       "device-only ($0.040000), 0 failed"),
            std::string::npos)
      << table;
  // The device-only class has nothing to compare: its saving reads "-", not 100 %.
  ASSERT_EQ(report->data_classes[0].data_class, "device-only");
  EXPECT_EQ(report->data_classes[0].totals.compared_requests, 0);
  EXPECT_NE(table.find("device-only            2     0.000000     0.040000         -"),
            std::string::npos)
      << table;
}

TEST(ReportTest, NearestRankPercentilesOverOneToHundred) {
  TempDir dir;
  const std::string path = dir.file("p.db");
  {
    auto store = open_store({.path = path});
    ASSERT_TRUE(store);
    for (int i = 100; i >= 1; --i) store->submit(row("edge", "device", "public", "ok", 0, 0, i, i));
  }
  auto report = build_report(path);
  ASSERT_TRUE(report.ok()) << report.error().message;
  ASSERT_EQ(report->tiers.size(), 1u);
  EXPECT_EQ(report->tiers[0].total_ms.p50, 50);
  EXPECT_EQ(report->tiers[0].total_ms.p95, 95);
  EXPECT_EQ(report->tiers[0].total_ms.p99, 99);
  EXPECT_EQ(report->totals.cost_saved_pct, 0.0);  // nothing to save against
}

TEST(ReportTest, ParsesDurations) {
  EXPECT_EQ(parse_duration("90s").value(), 90s);
  EXPECT_EQ(parse_duration("30m").value(), 30min);
  EXPECT_EQ(parse_duration("24h").value(), 24h);
  EXPECT_EQ(parse_duration("7d").value(), 7 * 24h);
  EXPECT_EQ(parse_duration("2w").value(), 14 * 24h);
  for (const char* bad : {"", "h", "24", "-1h", "0h", "1.5h", "24x", "h24"}) {
    EXPECT_FALSE(parse_duration(bad).ok()) << bad;
  }
}

// Runs `foreshore ARGS...` to the end, output included.
std::unique_ptr<foreshore::testing::Process> run_to_end(std::vector<std::string> args,
                                                        int& status) {
  args.insert(args.begin(), foreshore::testing::foreshore_binary());
  auto process = foreshore::testing::Process::start(args);
  status = process->wait(30s).value_or(-1);
  return process;
}

TEST(ReportTest, CommandPrintsJsonAndTable) {
  TempDir dir;
  const std::string path = write_report_rows(dir);
  // The rows are an hour older than kNow, which is long past: no --since here.
  int status = -1;
  auto json_run = run_to_end({"report", "--db", path, "--json"}, status);
  ASSERT_EQ(status, 0) << json_run->stderr_text();
  const auto j = nlohmann::json::parse(json_run->stdout_text());
  EXPECT_EQ(j["totals"]["requests"], 8);
  EXPECT_NEAR(j["totals"]["cost_usd"].get<double>(), 1.05, 1e-12);

  auto table_run = run_to_end({"report", "--db", path}, status);
  ASSERT_EQ(status, 0) << table_run->stderr_text();
  EXPECT_NE(table_run->stdout_text().find("requests          8"), std::string::npos)
      << table_run->stdout_text();

  auto missing = run_to_end({"report", "--db", dir.file("none.db")}, status);
  EXPECT_EQ(status, 2);
  EXPECT_NE(missing->stderr_text().find("does not exist"), std::string::npos)
      << missing->stderr_text();

  auto bad_since = run_to_end({"report", "--db", path, "--since", "yesterday"}, status);
  EXPECT_EQ(status, 2);
  EXPECT_NE(bad_since->stderr_text().find("yesterday"), std::string::npos);
}

// ---------------------------------------------------------------- memory pressure

// A fake /proc and cgroup v2 tree: the process sits in app.slice/fsh.service,
// whose own memory.max is "max" while its parent app.slice is limited.
struct FakeProc {
  TempDir dir;
  FakeProc() {
    psi(0, 0);
    dir.write("proc/meminfo",
              "MemTotal:        1000000 kB\nMemFree:          500000 kB\n"
              "MemAvailable:     900000 kB\n");
    dir.write("proc/self/cgroup", "0::/app.slice/fsh.service\n");
    dir.write("sys/fs/cgroup/app.slice/fsh.service/memory.max", "max\n");
    dir.write("sys/fs/cgroup/app.slice/fsh.service/memory.current", "100\n");
    dir.write("sys/fs/cgroup/app.slice/memory.max", "1000\n");
    cgroup_current(100);
  }
  void psi(double some, double full) {
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "some avg10=%.2f avg60=0.00 avg300=0.00 total=1234\n"
                  "full avg10=%.2f avg60=0.00 avg300=0.00 total=567\n",
                  some, full);
    dir.write("proc/pressure/memory", buf);
  }
  void cgroup_current(uint64_t bytes) {
    dir.write("sys/fs/cgroup/app.slice/memory.current", std::to_string(bytes) + "\n");
  }
  MemoryPressureOptions options() const {
    MemoryPressureOptions o;
    o.root = dir.path();
    o.interval = 10ms;
    return o;
  }
};

TEST(MemoryPressureTest, ReadsEverySignalAndFindsTheBindingCgroupLimit) {
  FakeProc proc;
  proc.dir.write("proc/self/statm", "5000 250 100 10 0 200 0\n");
  MemoryPressureOptions o = proc.options();
  o.budget_bytes = 100ull << 20;
  MemoryPressureMonitor monitor(o);
  const MemorySample s = monitor.sample_now();
  EXPECT_EQ(s.psi_some_avg10, 0.0);
  EXPECT_EQ(s.psi_full_avg10, 0.0);
  EXPECT_EQ(s.mem_total, 1000000ull * 1024);
  EXPECT_EQ(s.mem_available, 900000ull * 1024);
  EXPECT_EQ(s.cgroup_max, 1000u);  // the parent's limit: the child's is "max"
  EXPECT_EQ(s.cgroup_working_set, 100u);
  EXPECT_EQ(s.rss_bytes, 250ull * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE)));
  EXPECT_EQ(s.level, 0);
  EXPECT_EQ(monitor.level(), 0);
}

TEST(MemoryPressureTest, CgroupMaxEverywhereMeansNoCgroupSignal) {
  FakeProc proc;
  proc.dir.write("sys/fs/cgroup/app.slice/memory.max", "max\n");
  proc.cgroup_current(999999);
  MemoryPressureMonitor monitor(proc.options());
  const MemorySample s = monitor.sample_now();
  EXPECT_FALSE(s.cgroup_max.has_value());
  EXPECT_EQ(s.level, 0);
}

TEST(MemoryPressureTest, PsiLevelsWithHysteresis) {
  FakeProc proc;
  MemoryPressureMonitor monitor(proc.options());
  std::vector<std::pair<int, int>> changes;
  monitor.set_on_change(
      [&](int old_level, const MemorySample& s) { changes.emplace_back(old_level, s.level); });
  // Defaults for psi some: enter 10/30/60, recover 5/20/45.
  const std::pair<double, int> steps[] = {
      {35, 2},  // enters high
      {25, 2},  // below enter 30 but not below recover 20: stays
      {15, 1},  // below 20: down to some
      {7, 1},   // below enter 10, not below recover 5: stays
      {3, 0},   // recovered
      {65, 3},  // straight to critical
      {50, 3},  // above recover 45
      {0, 0},   // everything clear at once
  };
  for (const auto& [psi, level] : steps) {
    proc.psi(psi, 0);
    EXPECT_EQ(monitor.sample_now().level, level) << "psi some " << psi;
    EXPECT_EQ(monitor.level(), level);
  }
  const std::vector<std::pair<int, int>> want = {{0, 2}, {2, 1}, {1, 0}, {0, 3}, {3, 0}};
  EXPECT_EQ(changes, want);
  EXPECT_EQ(monitor.level_changes(), 5u);

  proc.psi(0, 12);  // psi full: enter 2/10/25
  EXPECT_EQ(monitor.sample_now().level, 2);
  EXPECT_NE(monitor.last_sample().driver.find("psi_full"), std::string::npos);
}

TEST(MemoryPressureTest, CgroupWorkingSetExcludesInactiveFileCache) {
  FakeProc proc;
  MemoryPressureMonitor monitor(proc.options());
  proc.cgroup_current(960);  // 0.96 of the limit: critical
  EXPECT_EQ(monitor.sample_now().level, 3);
  // 300 bytes of it are reclaimable file cache: 0.66, under every threshold.
  proc.dir.write("sys/fs/cgroup/app.slice/memory.stat",
                 "anon 600\nfile 360\nactive_file 60\ninactive_file 300\n");
  const MemorySample s = monitor.sample_now();
  EXPECT_EQ(s.cgroup_working_set, 660u);
  EXPECT_EQ(s.level, 0);
}

TEST(MemoryPressureTest, MemAvailableAndBudgetSignals) {
  FakeProc proc;
  proc.dir.write("proc/meminfo", "MemTotal: 1000 kB\nMemAvailable: 20 kB\n");
  MemoryPressureMonitor low_memory(proc.options());
  EXPECT_EQ(low_memory.sample_now().level, 3);  // 98 % used

  proc.dir.write("proc/meminfo", "MemTotal: 1000 kB\nMemAvailable: 900 kB\n");
  const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  proc.dir.write("proc/self/statm", "1000 93 10 1 0 50 0\n");
  MemoryPressureOptions o = proc.options();
  o.budget_bytes = 100 * page;  // RSS at 93 % of the budget: high (0.90)
  MemoryPressureMonitor budget(o);
  EXPECT_EQ(budget.sample_now().level, 2);
  EXPECT_NE(budget.last_sample().driver.find("budget"), std::string::npos);
}

TEST(MemoryPressureTest, FindsCgroup2MountFromMountinfo) {
  FakeProc proc;
  proc.dir.write("proc/self/mountinfo",
                 "25 1 0:22 / /sys rw,nosuid - sysfs sysfs rw\n"
                 "30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 "
                 "rw,nsdelegate\n");
  proc.dir.write("sys/fs/cgroup/unified/app.slice/memory.max", "2000\n");
  proc.dir.write("sys/fs/cgroup/unified/app.slice/memory.current", "1900\n");
  MemoryPressureMonitor monitor(proc.options());
  const MemorySample s = monitor.sample_now();
  EXPECT_EQ(s.cgroup_max, 2000u);
  EXPECT_EQ(s.level, 3);
}

TEST(MemoryPressureTest, SimulatedLevelFromFileAndOverride) {
  FakeProc proc;
  MemoryPressureOptions o = proc.options();
  o.simulate_file = proc.dir.file("simulate");
  MemoryPressureMonitor monitor(o);
  EXPECT_EQ(monitor.sample_now().level, 0);  // no file yet: measured
  proc.dir.write("simulate", "2\n");
  EXPECT_EQ(monitor.sample_now().level, 2);
  monitor.set_simulated_level(3);
  EXPECT_EQ(monitor.sample_now().level, 3);
  monitor.set_simulated_level(std::nullopt);
  EXPECT_EQ(monitor.sample_now().level, 2);
  proc.dir.write("simulate", "not a level");
  EXPECT_EQ(monitor.sample_now().level, 0);  // simulation ends at once, no hysteresis
  proc.dir.write("simulate", "1");
  EXPECT_EQ(monitor.sample_now().level, 1);
  proc.dir.remove("simulate");
  EXPECT_EQ(monitor.sample_now().level, 0);
}

TEST(MemoryPressureTest, BackgroundThreadFollowsTheSimulateFileFromTheEnvironment) {
  FakeProc proc;
  const std::string file = proc.dir.file("simulate");
  ::setenv(kSimulateMemoryPressureEnv, file.c_str(), 1);
  MemoryPressureOptions o = proc.options();
  apply_memory_pressure_env(o);
  ::unsetenv(kSimulateMemoryPressureEnv);
  EXPECT_EQ(o.simulate_file, file);

  MemoryPressureMonitor monitor(o);
  monitor.start();
  const auto wait_for = [&](int level) {
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (monitor.level() != level && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(5ms);
    }
    return monitor.level();
  };
  proc.dir.write("simulate", "3");
  EXPECT_EQ(wait_for(3), 3);
  proc.dir.write("simulate", "0");
  EXPECT_EQ(wait_for(0), 0);
  monitor.stop();
  monitor.stop();
}

TEST(MemoryPressureTest, ValidateRejectsBadThresholds) {
  MemoryPressureOptions o;
  EXPECT_TRUE(MemoryPressureMonitor::validate(o).ok());
  o.thresholds.cgroup.recover = {0.85, 0.95, 0.99};  // recover above enter
  const Status bad = MemoryPressureMonitor::validate(o);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("cgroup"), std::string::npos);
  o = {};
  o.thresholds.psi_some.enter = {30, 10, 60};
  EXPECT_FALSE(MemoryPressureMonitor::validate(o).ok());
  o = {};
  o.interval = 0ms;
  EXPECT_FALSE(MemoryPressureMonitor::validate(o).ok());
  o = {};
  o.thresholds.budget.enter = {kNeverEnter, kNeverEnter, kNeverEnter};
  EXPECT_TRUE(MemoryPressureMonitor::validate(o).ok());
}

// ---------------------------------------------------------------- version registry

TEST(VersionRegistryTest, DetectsAndCountsVersionChanges) {
  VersionRegistry registry;
  std::vector<VersionChange> seen;
  registry.set_on_change([&](const VersionChange& c) { seen.push_back(c); });
  registry.register_tier("edge", "qwen2-0.5b", "sha256:1111");
  registry.register_tier("cloud", "gpt-4o-mini", "");
  EXPECT_FALSE(registry.observe("edge", "qwen2-0.5b", "sha256:1111"));
  EXPECT_FALSE(registry.observe("cloud", "gpt-4o-mini", "gpt-4o-mini-2024-07-18"));  // learnt
  EXPECT_FALSE(registry.observe("cloud", "gpt-4o-mini", ""));  // not reported: no change
  EXPECT_TRUE(registry.observe("cloud", "gpt-4o-mini", "gpt-4o-mini-2024-09-01"));
  EXPECT_TRUE(registry.observe("edge", "qwen2-0.5b", "sha256:2222"));
  EXPECT_FALSE(registry.observe("edge", "qwen2-0.5b", "sha256:2222"));
  EXPECT_FALSE(registry.observe("new-tier", "m", "v1"));  // first sight registers

  EXPECT_EQ(registry.changes("cloud"), 1u);
  EXPECT_EQ(registry.changes("edge"), 1u);
  EXPECT_EQ(registry.changes("new-tier"), 0u);
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].tier, "cloud");
  EXPECT_EQ(seen[0].old_version, "gpt-4o-mini-2024-07-18");
  EXPECT_EQ(seen[0].new_version, "gpt-4o-mini-2024-09-01");
  EXPECT_EQ(seen[1].old_version, "sha256:1111");
  EXPECT_EQ(registry.tier("edge")->version, "sha256:2222");
  EXPECT_EQ(registry.tiers().size(), 3u);
  EXPECT_FALSE(registry.tier("nope").has_value());
}

TEST(VersionRegistryTest, PinsSessionsInABoundedLruWithTtl) {
  auto now = std::chrono::steady_clock::time_point{} + 1000h;
  VersionRegistry registry({.max_sessions = 3, .session_ttl = 60s, .now = [&] { return now; }});
  EXPECT_FALSE(registry.pin("a").has_value());
  registry.record("a", "edge", "v1");
  registry.record("b", "cloud", "c1");
  registry.record("c", "edge", "v1");
  ASSERT_TRUE(registry.pin("a").has_value());  // a becomes most recent
  registry.record("d", "edge", "v2");          // evicts b, the least recent
  EXPECT_EQ(registry.session_count(), 3u);
  EXPECT_FALSE(registry.pin("b").has_value());
  const auto a = registry.pin("a");
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(a->tier, "edge");
  EXPECT_EQ(a->version, "v1");

  registry.record("a", "cloud", "c1");  // re-pinned after its tier failed
  EXPECT_EQ(registry.pin("a")->tier, "cloud");

  now += 45s;
  EXPECT_TRUE(registry.pin("a").has_value());  // used: its TTL starts again
  now += 45s;
  EXPECT_TRUE(registry.pin("a").has_value());
  EXPECT_FALSE(registry.pin("c").has_value());  // idle 90 s > 60 s
  EXPECT_FALSE(registry.pin("d").has_value());
  EXPECT_EQ(registry.session_count(), 1u);
  registry.forget("a");
  EXPECT_EQ(registry.session_count(), 0u);
}

TEST(VersionRegistryTest, ConcurrentUseStaysBounded) {
  VersionRegistry registry({.max_sessions = 100});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5000; ++i) {
        const std::string id = "s" + std::to_string((i * 7 + t) % 300);
        if (!registry.pin(id)) registry.record(id, "edge", "v" + std::to_string(t));
        registry.observe("edge", "m", "v" + std::to_string(i % 2));
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_LE(registry.session_count(), 100u);
  EXPECT_GT(registry.changes("edge"), 0u);
}

AuditRecord numbered(int i) {
  AuditRecord r;
  r.request_id = "req-" + std::to_string(i);
  r.decision_id = r.request_id;
  r.policy = "cloud";
  r.plan_kind = "cloud";
  r.tier = "cloud";
  r.placement = "cloud";
  r.outcome = "ok";
  r.http_status = 200;
  r.cost_usd = 0.001;
  r.completion_tokens = 1;
  return r;
}

// Waits until PostgreSQL holds `want` rows; what it holds then.
std::string wait_rows(const foreshore::testing::PostgresServer& pg, const std::string& want) {
  std::string rows;
  for (int i = 0; i < 200; ++i) {
    rows = pg.query("SELECT count(*) FROM foreshore_requests");
    if (rows == want) break;
    std::this_thread::sleep_for(50ms);
  }
  return rows;
}

// PostgreSQL down: rows spool to the file, survive the process (a new sink
// replays them), and land once each, in order, when PostgreSQL is back.
TEST(PgAuditSinkTest, SpoolsWhileDownAndReplaysOnceAcrossRestarts) {
  TempDir dir;
  ::chmod(dir.file("").c_str(), 0755);
  auto pg = std::make_unique<foreshore::testing::PostgresServer>(dir.file("pg"));
  if (!pg->available()) GTEST_SKIP() << pg->why();
  ASSERT_TRUE(pg->ok()) << pg->why();
  const int port = pg->port();
  const std::string url = pg->url();
  PgAuditOptions o;
  o.conninfo = url;
  o.spool_path = dir.file("spool.jsonl");
  o.flush_interval = 20ms;
  o.retry_interval = 50ms;
  auto sink = PgAuditSink::open(o);
  ASSERT_TRUE(sink.ok()) << sink.error().message;
  for (int i = 0; i < 100; ++i) (*sink)->submit(numbered(i));
  EXPECT_EQ(wait_rows(*pg, "100"), "100");
  pg->kill();
  for (int i = 100; i < 200; ++i) (*sink)->submit(numbered(i));
  sink.value().reset();  // the process ends while PostgreSQL is down
  std::ifstream spool(o.spool_path);
  const auto spooled = std::count(std::istreambuf_iterator<char>(spool), {}, '\n');
  EXPECT_GE(spooled, 100);  // rows 100-199, and any earlier batch cut short
  pg = std::make_unique<foreshore::testing::PostgresServer>(dir.file("pg"), port);
  ASSERT_TRUE(pg->ok()) << pg->why();
  auto again = PgAuditSink::open(o);
  ASSERT_TRUE(again.ok());
  (*again)->submit(numbered(200));
  EXPECT_EQ(wait_rows(*pg, "201"), "201");
  EXPECT_EQ(pg->query("SELECT count(DISTINCT request_id) FROM foreshore_requests"), "201");
  // Replayed before the new row: order kept.
  EXPECT_EQ(pg->query("SELECT request_id FROM foreshore_requests ORDER BY id DESC LIMIT 1"),
            "req-200");
  EXPECT_EQ(fs::file_size(o.spool_path), 0u);
  // The report's copy reads every row.
  ASSERT_TRUE(copy_pg_audit_to_sqlite(url, dir.file("copy.sqlite")).ok());
  auto report = build_report(dir.file("copy.sqlite"), {});
  ASSERT_TRUE(report.ok()) << report.error().message;
  EXPECT_EQ(report->totals.requests, 201);
}

// Three replicas' sinks starting at once (each makes sure the table exists)
// and writing small batches at once into one table (the rate goal, 1,000
// rows/s and more, is bench/pg_audit_bench.sh's): every row lands once, and
// no writer sees an error (a deadlock or a table made twice would be one).
// A few rounds, each on a fresh table, since the starts race.
TEST(PgAuditSinkTest, ConcurrentWritersLandEveryRowOnceWithoutErrors) {
  TempDir dir;
  ::chmod(dir.file("").c_str(), 0755);
  foreshore::testing::PostgresServer pg(dir.file("pg"));
  if (!pg.available()) GTEST_SKIP() << pg.why();
  ASSERT_TRUE(pg.ok()) << pg.why();
  constexpr int kWriters = 3;
  constexpr int kRowsEach = 500;
  for (int round = 0; round < 3; ++round) {
    pg.query("DROP TABLE IF EXISTS foreshore_requests");
    std::atomic<int> errors{0};
    std::vector<std::unique_ptr<PgAuditSink>> sinks(kWriters);
    std::vector<std::thread> writers;
    for (int w = 0; w < kWriters; ++w) {
      writers.emplace_back([&, w] {
        PgAuditOptions o;
        o.conninfo = pg.url();
        o.spool_path = dir.file("spool-" + std::to_string(w) + ".jsonl");
        o.batch_size = 40;  // many small transactions, interleaved across writers
        o.flush_interval = 2ms;
        o.on_error = [&](const std::string& m) {
          ++errors;
          ADD_FAILURE() << m;
        };
        auto sink = PgAuditSink::open(std::move(o));
        ASSERT_TRUE(sink.ok()) << sink.error().message;
        PgAuditSink& mine = **sink;
        sinks[static_cast<size_t>(w)] = std::move(sink).value();
        for (int i = 0; i < kRowsEach; ++i) {
          AuditRecord r = numbered(i);
          r.request_id = "w" + std::to_string(w) + "-" + r.request_id;
          mine.submit(std::move(r));
        }
      });
    }
    for (auto& t : writers) t.join();
    const std::string want = std::to_string(kWriters * kRowsEach);
    EXPECT_EQ(wait_rows(pg, want), want) << "round " << round;
    EXPECT_EQ(pg.query("SELECT count(DISTINCT request_id) FROM foreshore_requests"), want);
    sinks.clear();
    EXPECT_EQ(errors.load(), 0) << "round " << round;
    for (int w = 0; w < kWriters; ++w) {
      const std::string spool = dir.file("spool-" + std::to_string(w) + ".jsonl");
      EXPECT_EQ(fs::exists(spool) ? fs::file_size(spool) : 0u, 0u) << w;
    }
  }
}

TEST(PgAuditSinkTest, BadSettingsAreRefusedWithAReason) {
  TempDir dir;
  PgAuditOptions o;
  o.spool_path = dir.file("spool.jsonl");
  EXPECT_NE(PgAuditSink::open(o).error().message.find("server.audit_postgres is empty"),
            std::string::npos);
  o.conninfo = "host=h port";
  EXPECT_NE(PgAuditSink::open(o).error().message.find("not a libpq connection string"),
            std::string::npos);
  o.conninfo = "postgresql://u@127.0.0.1:1/db";
  o.spool_path = dir.file("missing/folder/spool.jsonl");
  EXPECT_NE(PgAuditSink::open(o).error().message.find("cannot open the audit spool file"),
            std::string::npos);
}

TEST(MetricsTest, RendersPrometheusText) {
  MetricsRegistry m;
  m.counter("t_total", "Things.", {"tier", "status"}, {"edge", "200"}).add(2);
  m.counter("t_total", "Things.", {"tier", "status"}, {"edge", "200"}).add();
  m.histogram("lat_seconds", "Latency.", {"tier"}, {"e\"x"}).observe(0.003);
  const std::string text = m.render();
  EXPECT_NE(text.find("# TYPE t_total counter\n"), std::string::npos) << text;
  EXPECT_NE(text.find("t_total{tier=\"edge\",status=\"200\"} 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("# TYPE lat_seconds histogram\n"), std::string::npos) << text;
  EXPECT_NE(text.find("lat_seconds_bucket{tier=\"e\\\"x\",le=\"0.0025\"} 0\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("lat_seconds_bucket{tier=\"e\\\"x\",le=\"0.005\"} 1\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("lat_seconds_bucket{tier=\"e\\\"x\",le=\"+Inf\"} 1\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("lat_seconds_count{tier=\"e\\\"x\"} 1\n"), std::string::npos) << text;
}

}  // namespace
}  // namespace foreshore::observe
