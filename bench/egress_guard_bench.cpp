// Egress guard time per body: p50/p99 (counters p50_us, p99_us) for chat
// bodies of 4 KiB and 64 KiB, read the way the gateway reads them (every key
// and string unescaped, then the sensitivity detectors), whole and after
// routing (the message contents the router scanned are skipped). Goal
// (issue 16): p99 <= 20 us at 4 KiB and <= 300 us at 64 KiB.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "backend/egress_guard.h"
#include "bench_fixtures.h"
#include "route/sensitivity.h"

namespace {

using foreshore::backend::EgressGuard;
using foreshore::route::DataClass;
using foreshore::route::SensitivityDetector;

const SensitivityDetector& detector() {
  return foreshore::bench::default_detector();
}

// A multi-turn chat body with tools and metadata whose text is public prose
// and numbers (nothing the guard must refuse, so every string is scanned).
std::string body(size_t bytes, std::vector<std::string>* contents = nullptr) {
  static const char* kWords[] = {
      "the",        "model",   "request", "latency",    "budget",  "we",   "edge",
      "cloud",      "tiers",   "please",  "report",     "quarter", "grew", "by",
      "percent",    "version", "1.2.3",   "2024-05-17", "10:30",   "$129", "std::vector<int>",
      "\"quoted\"", "line\n"};
  uint32_t x = 12345;
  const auto next = [&] {
    x = x * 1103515245u + 12345u;
    return x >> 8;
  };
  nlohmann::json b = {
      {"model", "gpt-4o-mini"},
      {"max_tokens", 256},
      {"metadata", {{"team", "search"}, {"trace", "abc-123"}}},
      {"tools",
       {{{"type", "function"},
         {"function",
          {{"name", "lookup"},
           {"parameters",
            {{"type", "object"}, {"properties", {{"q", {{"type", "string"}}}}}}}}}}}}};
  nlohmann::json messages = nlohmann::json::array();
  while (b.dump().size() + 200 < bytes) {
    std::string text;
    while (text.size() < 180) {
      text += kWords[next() % std::size(kWords)];
      text += ' ';
    }
    messages.push_back({{"role", messages.size() % 2 ? "assistant" : "user"}, {"content", text}});
    if (contents != nullptr) contents->push_back(text);
    b["messages"] = messages;
  }
  return b.dump();
}

// `cleared`: the gateway's path, where the router has already scanned the
// message contents and the guard reads only the rest of the body. Without
// it: a body no routing decision vouches for (shadow runs), read whole.
void run(benchmark::State& state, size_t bytes, bool cleared) {
  std::vector<std::string> contents;
  const std::string text = body(bytes, &contents);
  foreshore::backend::EgressClearance clearance;
  clearance.texts = contents;
  EgressGuard guard;
  guard.set_policy([](std::string_view, std::span<const std::string_view> strings,
                      const foreshore::backend::EgressClearance*) {
    const auto found = detector().scan(strings);
    return found.data_class > DataClass::kPreferLocal ? std::string("refused") : std::string();
  });
  std::vector<double> us;
  us.reserve(1 << 16);
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    auto status = guard.check("cloud", text, cleared ? &clearance : nullptr);
    const auto t1 = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(status);
    if (!status.ok()) state.SkipWithError(status.error().message.c_str());
    us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  std::sort(us.begin(), us.end());
  const auto pct = [&](double p) { return us[std::min(us.size() - 1, size_t(p * us.size()))]; };
  state.counters["p50_us"] = pct(0.50);
  state.counters["p99_us"] = pct(0.99);
  state.counters["body_bytes"] = static_cast<double>(text.size());
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
}

void BM_Guard4KiB(benchmark::State& state) {
  run(state, 4 * 1024, false);
}
void BM_Guard64KiB(benchmark::State& state) {
  run(state, 64 * 1024, false);
}
void BM_GuardAfterRouting4KiB(benchmark::State& state) {
  run(state, 4 * 1024, true);
}
void BM_GuardAfterRouting64KiB(benchmark::State& state) {
  run(state, 64 * 1024, true);
}

// The JSON walk alone, without the detectors.
void BM_CollectStrings4KiB(benchmark::State& state) {
  const std::string text = body(4 * 1024);
  std::string arena;
  std::vector<std::string_view> out;
  std::string why;
  for (auto _ : state) {
    out.clear();
    benchmark::DoNotOptimize(foreshore::backend::collect_json_strings(text, 96, arena, out, why));
  }
  state.counters["strings"] = static_cast<double>(out.size());
}

BENCHMARK(BM_CollectStrings4KiB);
BENCHMARK(BM_Guard4KiB);
BENCHMARK(BM_Guard64KiB);
BENCHMARK(BM_GuardAfterRouting4KiB);
BENCHMARK(BM_GuardAfterRouting64KiB);

}  // namespace

BENCHMARK_MAIN();
