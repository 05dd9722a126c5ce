// What the shared state path adds to a request: admission (requests and
// tokens per minute and a budget hold, per key and per tier), the breaker
// read, the session pin read and write, and the settlement at the end, as
// the gateway runs them for one request, against the local backend and a
// Redis on loopback.
//
//   FORESHORE_BENCH_REDIS=redis://127.0.0.1:PORT build/bench/state_bench
//   bench/state_bench.sh   (starts a redis-server on a free port and runs this)
//
// Reports p50 and p99 per request in microseconds besides the mean.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

#include "hybrid/shared_limits.h"

namespace {

using foreshore::hybrid::SharedLimits;

void run_state_path(benchmark::State& st, const std::string& backend) {
  foreshore::state::StateSettings settings;
  settings.backend = backend;
  if (backend == "redis") {
    const char* url = std::getenv("FORESHORE_BENCH_REDIS");
    if (url == nullptr) {
      st.SkipWithError("set FORESHORE_BENCH_REDIS=redis://HOST:PORT (bench/state_bench.sh does)");
      return;
    }
    settings.url = url;
  }
  auto state = foreshore::state::SharedState::create(settings);
  if (!state.ok()) {
    st.SkipWithError(state.error().message.c_str());
    return;
  }
  if (!state.value()->connected()) {
    st.SkipWithError("Redis does not answer");
    return;
  }
  foreshore::hybrid::LimitsConfig limits;
  limits.per_key = {1'000'000'000, 1'000'000'000, 1e9};
  limits.per_tier["cloud"] = {1'000'000'000, 0, 1e9};
  SharedLimits shared(std::move(state).value(), true, limits, std::chrono::milliseconds(5000));
  foreshore::backend::TierConfig cloud;
  cloud.name = "cloud";
  cloud.placement = foreshore::backend::Placement::kCloud;
  cloud.price_input_per_mtok = 2.5;
  cloud.price_output_per_mtok = 10;
  const std::vector<foreshore::backend::TierConfig> tiers = {cloud};
  foreshore::route::Decision decision;
  decision.plan.kind = foreshore::route::PlanKind::kCloud;
  decision.plan.cloud_tier = "cloud";
  decision.plan.cloud_allowed = true;
  foreshore::hybrid::Request api;
  api.backend.messages.push_back({"user", "How far is the moon?"});
  api.backend.params.max_tokens = 64;
  const std::string client = foreshore::hybrid::client_identity("Bearer bench-key");

  std::vector<double> us;
  us.reserve(1 << 20);
  int64_t n = 0;
  for (auto _ : st) {
    const auto start = std::chrono::steady_clock::now();
    foreshore::hybrid::Reservation reservation;
    auto refused = shared.admit(client, nullptr, decision, api, tiers, reservation);
    benchmark::DoNotOptimize(refused);
    benchmark::DoNotOptimize(shared.breaker_open("cloud"));
    const std::string session = "session-" + std::to_string(n++ % 1000);
    benchmark::DoNotOptimize(shared.pinned_tier(session));
    shared.settle(reservation, 0.0004, 60);
    shared.pin(session, "cloud");
    us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
                     .count());
  }
  if (us.empty()) return;
  std::sort(us.begin(), us.end());
  st.counters["p50_us"] = us[us.size() / 2];
  st.counters["p99_us"] = us[std::min(us.size() - 1, us.size() * 99 / 100)];
}

void BM_StatePathLocal(benchmark::State& st) {
  run_state_path(st, "local");
}
void BM_StatePathRedis(benchmark::State& st) {
  run_state_path(st, "redis");
}

BENCHMARK(BM_StatePathLocal)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_StatePathRedis)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
