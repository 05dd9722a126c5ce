// Complexity signal cost: feature extraction + scoring with the shipped model,
// for 200 B, 4 KiB and 64 KiB prompts. The router's whole budget is p99 <=
// 100 us at 4 KiB and <= 1 ms at 64 KiB, so this must be a small part of it.
// Reports p50/p99 per call (each call timed alone) next to the mean.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_fixtures.h"
#include "route/complexity.h"

namespace {

using foreshore::route::ComplexityModel;

void BM_ComplexityScore(benchmark::State& state) {
  const std::string prompt = foreshore::bench::mixed_prompt(static_cast<size_t>(state.range(0)));
  const ComplexityModel& m = *foreshore::bench::shipped_complexity_model();
  std::vector<double> ns;
  ns.reserve(1 << 16);
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(m.score(prompt));
    const auto t1 = std::chrono::steady_clock::now();
    if (ns.size() < ns.capacity()) {
      ns.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count());
    }
  }
  std::sort(ns.begin(), ns.end());
  if (!ns.empty()) {
    state.counters["p50_us"] = ns[ns.size() / 2] / 1e3;
    state.counters["p99_us"] = ns[std::min(ns.size() - 1, ns.size() * 99 / 100)] / 1e3;
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_ComplexityScore)->Arg(200)->Arg(4096)->Arg(65536);

// The explain path materializes the features (allocates); for /v1/route only.
void BM_ComplexityExplain(benchmark::State& state) {
  const std::string prompt = foreshore::bench::mixed_prompt(static_cast<size_t>(state.range(0)));
  const ComplexityModel& m = *foreshore::bench::shipped_complexity_model();
  for (auto _ : state) benchmark::DoNotOptimize(m.explain(prompt).probability);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_ComplexityExplain)->Arg(4096);

}  // namespace

BENCHMARK_MAIN();
