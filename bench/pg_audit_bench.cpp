// Several replicas' audit sinks (observe/pg_audit.h) writing into one
// PostgreSQL at once: a paced run at a target rate (the goal: 1,000 records/s
// from three writers, no errors, no deadlocks, nothing left behind) and an
// unpaced run for the most the database takes. The sinks run as deployed
// (batches of up to 500 rows, flushed every 200 ms, off the request path).
//
//   FORESHORE_BENCH_POSTGRES=postgresql://postgres@127.0.0.1:PORT/postgres
//   build/bench/pg_audit_bench [writers] [records_per_second] [seconds]
//   bench/pg_audit_bench.sh   (starts a PostgreSQL 15 on a free port, runs
//                              this, and counts the rows)
//
// Prints one line per run; exits 1 when a writer reported an error or a row
// did not land.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "observe/pg_audit.h"

namespace {

using foreshore::observe::AuditRecord;
using foreshore::observe::PgAuditOptions;
using foreshore::observe::PgAuditSink;
using Clock = std::chrono::steady_clock;

struct RunResult {
  int64_t records = 0;
  double submit_seconds = 0;  // until the last record was queued
  double land_seconds = 0;    // until PostgreSQL held every one
  int64_t max_backlog = 0;    // queued but not yet written, at worst
  int errors = 0;
};

AuditRecord record(const std::string& id) {
  AuditRecord r;
  r.request_id = id;
  r.decision_id = id;
  r.policy = "threshold";
  r.plan_kind = "cloud";
  r.tier = "cloud";
  r.placement = "cloud";
  r.model = "bench-model";
  r.outcome = "ok";
  r.http_status = 200;
  r.cost_usd = 0.001;
  r.prompt_tokens = 40;
  r.completion_tokens = 60;
  r.total_ms = 350;
  r.prompt_text = "How far is the moon from the earth, in kilometres?";
  return r;
}

// `writers` sinks each submit records_each records, at `per_second` in total
// (0: as fast as they can).
RunResult run(const std::string& conninfo, const std::string& tag, int writers,
              int64_t records_each, double per_second) {
  RunResult out;
  std::atomic<int> errors{0};
  std::vector<std::unique_ptr<PgAuditSink>> sinks;
  for (int w = 0; w < writers; ++w) {
    PgAuditOptions o;
    o.conninfo = conninfo;
    o.spool_path = "/tmp/fsh-pg-audit-bench-" + std::to_string(::getpid()) + "-" +
                   std::to_string(w) + ".jsonl";
    o.on_error = [&](const std::string& m) {
      ++errors;
      std::fprintf(stderr, "pg_audit_bench: writer error: %s\n", m.c_str());
    };
    auto sink = PgAuditSink::open(std::move(o));
    if (!sink.ok()) {
      std::fprintf(stderr, "pg_audit_bench: %s\n", sink.error().message.c_str());
      std::exit(1);
    }
    sinks.push_back(std::move(sink).value());
  }
  const auto written = [&] {
    uint64_t n = 0;
    for (const auto& s : sinks) n += s->written();
    return static_cast<int64_t>(n);
  };
  out.records = records_each * writers;
  std::atomic<int64_t> submitted{0};
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int w = 0; w < writers; ++w) {
    threads.emplace_back([&, w] {
      const double each_per_second = per_second / writers;
      for (int64_t i = 0; i < records_each; ++i) {
        if (per_second > 0) {
          std::this_thread::sleep_until(
              start + std::chrono::duration_cast<Clock::duration>(
                          std::chrono::duration<double>(static_cast<double>(i) / each_per_second)));
        }
        sinks[static_cast<size_t>(w)]->submit(
            record(tag + "-w" + std::to_string(w) + "-" + std::to_string(i)));
        ++submitted;
      }
    });
  }
  std::thread watcher([&] {
    while (written() < out.records) {
      out.max_backlog = std::max(out.max_backlog, submitted.load() - written());
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      if (Clock::now() - start > std::chrono::minutes(5)) break;
    }
  });
  for (auto& t : threads) t.join();
  out.submit_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  watcher.join();
  out.land_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  const bool all_landed = written() == out.records;
  sinks.clear();
  out.errors = errors.load() + (all_landed ? 0 : 1);
  for (int w = 0; w < writers; ++w) {
    std::remove(("/tmp/fsh-pg-audit-bench-" + std::to_string(::getpid()) + "-" + std::to_string(w) +
                 ".jsonl")
                    .c_str());
  }
  return out;
}

void print(const char* name, const RunResult& r) {
  std::printf(
      "%-8s records %lld  submitted in %.2f s (%.0f/s)  all in PostgreSQL after %.2f s "
      "(%.0f/s)  worst backlog %lld rows  errors %d\n",
      name, static_cast<long long>(r.records), r.submit_seconds,
      static_cast<double>(r.records) / r.submit_seconds, r.land_seconds,
      static_cast<double>(r.records) / r.land_seconds, static_cast<long long>(r.max_backlog),
      r.errors);
}

}  // namespace

int main(int argc, char** argv) {
  const char* url = std::getenv("FORESHORE_BENCH_POSTGRES");
  if (url == nullptr) {
    std::fprintf(stderr,
                 "pg_audit_bench: set FORESHORE_BENCH_POSTGRES=postgresql://USER@HOST:PORT/DB "
                 "(bench/pg_audit_bench.sh starts a server and does)\n");
    return 2;
  }
  const int writers = argc > 1 ? std::atoi(argv[1]) : 3;
  const double rate = argc > 2 ? std::atof(argv[2]) : 1000;
  const double seconds = argc > 3 ? std::atof(argv[3]) : 5;
  if (writers < 1 || rate <= 0 || seconds <= 0) {
    std::fprintf(stderr,
                 "pg_audit_bench: usage: pg_audit_bench [writers>0] [rate>0] [seconds>0]\n");
    return 2;
  }
  const std::string tag = "bench-" + std::to_string(::getpid());
  const auto paced_each = static_cast<int64_t>(rate * seconds / writers);
  const RunResult paced = run(url, tag + "-paced", writers, paced_each, rate);
  print("paced", paced);
  const RunResult flat = run(url, tag + "-flat", writers, paced_each * 4, 0);
  print("unpaced", flat);
  std::printf("expected rows %lld\n", static_cast<long long>(paced.records + flat.records));
  return paced.errors + flat.errors == 0 ? 0 : 1;
}
