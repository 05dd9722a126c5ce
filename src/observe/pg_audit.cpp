#include "observe/pg_audit.h"

#include <libpq-fe.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <vector>

#include "common/sha256.h"

namespace foreshore::observe {
namespace {

// One replica at a time creates the table. Sent as one query string, so one
// transaction: the lock is the transaction's and goes with its commit. (A
// session lock released by its last statement was let go before the commit,
// and a replica starting beside it then failed on "already exists".)
constexpr const char* kSchema = R"sql(
SELECT pg_advisory_xact_lock(7315140);
CREATE TABLE IF NOT EXISTS foreshore_requests (
  id BIGSERIAL PRIMARY KEY,
  ts_ms BIGINT NOT NULL,
  request_id TEXT NOT NULL UNIQUE,
  decision_id TEXT NOT NULL,
  policy TEXT NOT NULL,
  plan_kind TEXT NOT NULL,
  tier TEXT NOT NULL,
  placement TEXT NOT NULL,
  model TEXT NOT NULL,
  model_version TEXT NOT NULL,
  data_class TEXT NOT NULL,
  prompt_tokens BIGINT NOT NULL,
  completion_tokens BIGINT NOT NULL,
  cost_usd DOUBLE PRECISION NOT NULL,
  cloud_cost_usd DOUBLE PRECISION NOT NULL,
  ttft_ms DOUBLE PRECISION,
  total_ms DOUBLE PRECISION NOT NULL,
  confidence DOUBLE PRECISION,
  outcome TEXT NOT NULL,
  http_status INTEGER NOT NULL,
  escalated BOOLEAN NOT NULL,
  degraded BOOLEAN NOT NULL,
  prompt_sha256 TEXT NOT NULL,
  prompt_text TEXT
);
CREATE INDEX IF NOT EXISTS foreshore_requests_ts ON foreshore_requests(ts_ms);
)sql";

constexpr const char* kInsert =
    "INSERT INTO foreshore_requests (ts_ms, request_id, decision_id, policy, plan_kind, tier, "
    "placement, model, model_version, data_class, prompt_tokens, completion_tokens, cost_usd, "
    "cloud_cost_usd, ttft_ms, total_ms, confidence, outcome, http_status, escalated, degraded, "
    "prompt_sha256, prompt_text) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, "
    "$14, $15, $16, $17, $18, $19, $20, $21, $22, $23) ON CONFLICT (request_id) DO NOTHING";

constexpr const char* kColumns[] = {
    "ts_ms",         "request_id",        "decision_id", "policy",         "plan_kind",
    "tier",          "placement",         "model",       "model_version",  "data_class",
    "prompt_tokens", "completion_tokens", "cost_usd",    "cloud_cost_usd", "ttft_ms",
    "total_ms",      "confidence",        "outcome",     "http_status",    "escalated",
    "degraded",      "prompt_sha256",     "prompt_text"};

PGconn* pg(void* c) {
  return static_cast<PGconn*>(c);
}

// A config reload builds a new sink while the old one still drains: both may
// spool to, and replay, the same file. One at a time.
std::mutex& spool_file_mutex() {
  static std::mutex mu;
  return mu;
}

std::string to_json_line(const AuditRecord& r, bool store_text) {
  // PostgreSQL may run on another host: the text of data that may not leave
  // the device (contractual, device-only) is never written there, nor its
  // hash (a short secret's hash is a lookup away from the secret).
  const bool stays_on_device = r.data_class == "device-only" || r.data_class == "contractual";
  store_text = store_text && !stays_on_device;
  nlohmann::json j = {
      {"ts_ms", r.time_ms},
      {"request_id", r.request_id},
      {"decision_id", r.decision_id},
      {"policy", r.policy},
      {"plan_kind", r.plan_kind},
      {"tier", r.tier},
      {"placement", r.placement},
      {"model", r.model},
      {"model_version", r.model_version},
      {"data_class", r.data_class},
      {"prompt_tokens", r.prompt_tokens},
      {"completion_tokens", r.completion_tokens},
      {"cost_usd", r.cost_usd},
      {"cloud_cost_usd", r.cloud_cost_usd},
      {"ttft_ms", r.ttft_ms ? nlohmann::json(*r.ttft_ms) : nlohmann::json()},
      {"total_ms", r.total_ms},
      {"confidence", r.confidence ? nlohmann::json(*r.confidence) : nlohmann::json()},
      {"outcome", r.outcome},
      {"http_status", r.http_status},
      {"escalated", r.escalated},
      {"degraded", r.degraded},
      {"prompt_sha256", stays_on_device ? std::string() : sha256_hex(r.prompt_text)},
      {"prompt_text", store_text ? nlohmann::json(r.prompt_text) : nlohmann::json()}};
  return j.dump();
}

// A column as libpq's text parameter: nullopt for SQL NULL.
std::optional<std::string> param(const nlohmann::json& v) {
  if (v.is_null()) return std::nullopt;
  if (v.is_string()) return v.get<std::string>();
  if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
  return v.dump();
}

}  // namespace

std::string describe_conninfo(const std::string& conninfo) {
  PQconninfoOption* parsed = PQconninfoParse(conninfo.c_str(), nullptr);
  if (parsed == nullptr) return "postgresql (a malformed connection string)";
  std::string user, host, port, dbname;
  for (PQconninfoOption* o = parsed; o->keyword != nullptr; ++o) {
    if (o->val == nullptr) continue;
    const std::string_view key = o->keyword;
    if (key == "user") user = o->val;
    if (key == "host") host = o->val;
    if (key == "port") port = o->val;
    if (key == "dbname") dbname = o->val;
  }
  PQconninfoFree(parsed);
  return "postgresql://" + (user.empty() ? "" : user + "@") + host +
         (port.empty() ? "" : ":" + port) + "/" + dbname;
}

Result<std::unique_ptr<PgAuditSink>> PgAuditSink::open(PgAuditOptions options) {
  if (options.conninfo.empty()) {
    return make_error(ErrorKind::kInvalidArgument,
                      "server.audit_postgres is empty; set it to a libpq connection string "
                      "(postgresql://USER@HOST:PORT/DB)");
  }
  char* why = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(options.conninfo.c_str(), &why);
  if (parsed == nullptr) {
    std::string message = why ? why : "malformed";
    PQfreemem(why);
    return make_error(ErrorKind::kInvalidArgument,
                      "server.audit_postgres is not a libpq connection string (" + message +
                          "); write it as postgresql://USER@HOST:PORT/DB or 'host=... dbname=...'");
  }
  PQconninfoFree(parsed);
  if (options.spool_path.empty()) {
    return make_error(ErrorKind::kInvalidArgument,
                      "server.audit_spool is empty; name a local file where audit records wait "
                      "while PostgreSQL is down");
  }
  if (std::FILE* f = std::fopen(options.spool_path.c_str(), "a")) {
    std::fclose(f);
  } else {
    return make_error(ErrorKind::kIo, "cannot open the audit spool file '" + options.spool_path +
                                          "' for appending; check its folder exists and is "
                                          "writable");
  }
  // A server that answers and refuses (no such database or role, a wrong
  // password) will refuse every later try too: said at start, as for Redis,
  // rather than spooled to forever. One that does not answer may come up
  // later, and the spool waits for it.
  const char* keys[] = {"dbname", "connect_timeout", nullptr};
  const char* values[] = {options.conninfo.c_str(), "3", nullptr};
  PGconn* probe = PQconnectdbParams(keys, values, /*expand_dbname=*/1);
  const std::string refusal = PQstatus(probe) == CONNECTION_OK ? "" : PQerrorMessage(probe);
  PQfinish(probe);
  if (refusal.find("authentication failed") != std::string::npos ||
      refusal.find("does not exist") != std::string::npos ||
      refusal.find("no password supplied") != std::string::npos) {
    std::string why = refusal.substr(0, refusal.find_last_not_of(" \n") + 1);
    return make_error(ErrorKind::kInvalidArgument,
                      "server.audit_postgres: " + describe_conninfo(options.conninfo) +
                          " refused the connection (" + why +
                          "); check the user, password and database name");
  }
  std::unique_ptr<PgAuditSink> sink(new PgAuditSink(std::move(options)));
  sink->thread_ = std::thread([s = sink.get()] { s->run(); });
  return sink;
}

PgAuditSink::PgAuditSink(PgAuditOptions options) : options_(std::move(options)) {}

PgAuditSink::~PgAuditSink() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
  disconnect();
}

void PgAuditSink::submit(AuditRecord record) {
  if (record.time_ms == 0) {
    record.time_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
  }
  std::string line = to_json_line(record, options_.store_text);
  bool full = false;
  {
    std::lock_guard lock(mu_);
    queue_.push_back(std::move(line));
    full = queue_.size() >= options_.batch_size;
  }
  if (full) cv_.notify_one();
}

bool PgAuditSink::connect() {
  if (conn_ != nullptr) return true;
  const auto now = std::chrono::steady_clock::now();
  if (now < next_try_) return false;
  next_try_ = now + options_.retry_interval;
  PGconn* c = PQconnectdb(options_.conninfo.c_str());
  if (PQstatus(c) != CONNECTION_OK) {
    if (!logged_down_ && options_.on_error) {
      options_.on_error("PostgreSQL audit sink cannot connect (" + std::string(PQerrorMessage(c)) +
                        "); records spool to " + options_.spool_path + " until it answers");
    }
    logged_down_ = true;
    PQfinish(c);
    return false;
  }
  // "already exists, skipping" at every start is no news: notices are dropped.
  PQsetNoticeProcessor(
      c, [](void*, const char*) {}, nullptr);
  PGresult* r = PQexec(c, kSchema);
  const bool ok = PQresultStatus(r) == PGRES_TUPLES_OK || PQresultStatus(r) == PGRES_COMMAND_OK;
  if (!ok && options_.on_error) {
    options_.on_error("PostgreSQL audit sink cannot create its table: " +
                      std::string(PQerrorMessage(c)));
  }
  PQclear(r);
  if (!ok) {
    PQfinish(c);
    return false;
  }
  conn_ = c;
  connected_ = true;
  if (logged_down_ && options_.on_error) {
    options_.on_error("PostgreSQL audit sink connected again; replaying the spool file");
  }
  logged_down_ = false;
  return true;
}

void PgAuditSink::disconnect() {
  if (conn_ != nullptr) PQfinish(pg(conn_));
  conn_ = nullptr;
  connected_ = false;
}

bool PgAuditSink::write(const std::deque<std::string>& rows) {
  if (rows.empty()) return true;
  if (!connect()) return false;
  PGconn* c = pg(conn_);
  const auto exec = [&](const char* sql) {
    PGresult* r = PQexec(c, sql);
    const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
    return ok;
  };
  bool ok = exec("BEGIN");
  for (const std::string& line : rows) {
    if (!ok) break;
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (!j.is_object()) continue;  // a torn spool line: the row it held was never complete
    std::vector<std::optional<std::string>> values;
    std::vector<const char*> params;
    for (const char* column : kColumns) values.push_back(param(j.value(column, nlohmann::json())));
    for (const auto& v : values) params.push_back(v ? v->c_str() : nullptr);
    PGresult* r = PQexecParams(c, kInsert, static_cast<int>(params.size()), nullptr, params.data(),
                               nullptr, nullptr, 0);
    ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    PQclear(r);
  }
  ok = ok && exec("COMMIT");
  if (!ok) {
    if (options_.on_error) {
      options_.on_error("PostgreSQL audit write failed (" + std::string(PQerrorMessage(c)) +
                        "); the batch goes to the spool file " + options_.spool_path);
    }
    disconnect();
    return false;
  }
  written_ += rows.size();
  return true;
}

void PgAuditSink::spool(const std::deque<std::string>& rows) {
  std::lock_guard lock(spool_file_mutex());
  std::ofstream out(options_.spool_path, std::ios::app);
  for (const auto& line : rows) out << line << '\n';
  out.flush();
  if (!out && options_.on_error) {
    options_.on_error("cannot append to the audit spool file " + options_.spool_path +
                      "; audit records are being lost");
  }
  spooled_ += rows.size();
}

bool PgAuditSink::replay_spool() {
  std::lock_guard lock(spool_file_mutex());
  std::ifstream in(options_.spool_path);
  if (!in || in.peek() == std::ifstream::traits_type::eof()) return true;
  std::deque<std::string> batch;
  std::string line;
  while (std::getline(in, line)) {
    batch.push_back(std::move(line));
    if (batch.size() >= options_.batch_size) {
      if (!write(batch)) return false;  // the file stays; a later replay skips what landed
      batch.clear();
    }
  }
  if (!write(batch)) return false;
  in.close();
  std::ofstream(options_.spool_path, std::ios::trunc).flush();
  return true;
}

void PgAuditSink::run() {
  std::unique_lock lock(mu_);
  // Records spooled by an earlier run of this process are replayed first.
  bool spool_pending = true;
  for (;;) {
    cv_.wait_for(lock, options_.flush_interval,
                 [&] { return stopping_ || queue_.size() >= options_.batch_size; });
    const bool stopping = stopping_;
    std::deque<std::string> batch;
    while (!queue_.empty() && batch.size() < options_.batch_size) {
      batch.push_back(std::move(queue_.front()));
      queue_.pop_front();
    }
    lock.unlock();
    if (spool_pending) spool_pending = !(connect() && replay_spool());
    if (!batch.empty()) {
      // Order is kept: nothing goes to the database while older rows still spool.
      if (spool_pending || !write(batch)) {
        spool(batch);
        spool_pending = true;
      }
    }
    lock.lock();
    if (stopping && queue_.empty()) return;
  }
}

Status copy_pg_audit_to_sqlite(const std::string& conninfo, const std::string& sqlite_path) {
  PGconn* c = PQconnectdb(conninfo.c_str());
  if (PQstatus(c) != CONNECTION_OK) {
    std::string why = PQerrorMessage(c);
    PQfinish(c);
    return make_error(ErrorKind::kUnavailable, "cannot connect to PostgreSQL (" + why +
                                                   "); check --postgres and that the server runs");
  }
  PGresult* r = PQexec(
      c,
      "SELECT ts_ms, request_id, decision_id, policy, plan_kind, tier, placement, model, "
      "model_version, data_class, prompt_tokens, completion_tokens, cost_usd, cloud_cost_usd, "
      "ttft_ms, total_ms, confidence, outcome, http_status, escalated, degraded "
      "FROM foreshore_requests ORDER BY id");
  if (PQresultStatus(r) != PGRES_TUPLES_OK) {
    std::string why = PQerrorMessage(c);
    PQclear(r);
    PQfinish(c);
    return make_error(ErrorKind::kNotFound,
                      "cannot read the audit table foreshore_requests (" + why +
                          "); is this the database the gateways' server.audit_postgres names?");
  }
  AuditOptions options;
  options.path = sqlite_path;
  options.queue_capacity = static_cast<size_t>(PQntuples(r)) + 1;
  auto store = AuditStore::open(std::move(options));
  if (!store.ok()) {
    PQclear(r);
    PQfinish(c);
    return store.error();
  }
  const auto text = [&](int row, int col) { return std::string(PQgetvalue(r, row, col)); };
  const auto number = [&](int row, int col) { return std::stod(PQgetvalue(r, row, col)); };
  for (int i = 0; i < PQntuples(r); ++i) {
    AuditRecord rec;
    rec.time_ms = std::stoll(text(i, 0));
    rec.request_id = text(i, 1);
    rec.decision_id = text(i, 2);
    rec.policy = text(i, 3);
    rec.plan_kind = text(i, 4);
    rec.tier = text(i, 5);
    rec.placement = text(i, 6);
    rec.model = text(i, 7);
    rec.model_version = text(i, 8);
    rec.data_class = text(i, 9);
    rec.prompt_tokens = std::stoll(text(i, 10));
    rec.completion_tokens = std::stoll(text(i, 11));
    rec.cost_usd = number(i, 12);
    rec.cloud_cost_usd = number(i, 13);
    if (!PQgetisnull(r, i, 14)) rec.ttft_ms = number(i, 14);
    rec.total_ms = number(i, 15);
    if (!PQgetisnull(r, i, 16)) rec.confidence = number(i, 16);
    rec.outcome = text(i, 17);
    rec.http_status = std::stoi(text(i, 18));
    rec.escalated = text(i, 19) == "t";
    rec.degraded = text(i, 20) == "t";
    (*store)->submit(std::move(rec));
  }
  PQclear(r);
  PQfinish(c);
  return Status::Ok();
}

}  // namespace foreshore::observe
