// The full routing decision (sensitivity scan, complexity score, budget and
// device signals, rules and policy) for prompts of 200 B, 4 KiB and 64 KiB.
// Reports p50/p99 per decision; goal p99 <= 100 us at 4 KiB, <= 1 ms at 64 KiB.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "route/router.h"

namespace foreshore::route {
namespace {

std::string make_prompt(size_t bytes) {
  const std::string para =
      "Please review the quarterly report and explain, step by step, why revenue in the "
      "northern region fell while costs rose; contact jane.doe@example.com with questions. "
      "Compare it with last year's figures (12.5% vs 9.1%) and suggest three actions. ";
  std::string out;
  while (out.size() < bytes) out += para;
  out.resize(bytes);
  return out;
}

std::unique_ptr<Router> make_router() {
  TierProfile edge{.name = "edge",
                   .on_device = true,
                   .max_data_class = DataClass::kDeviceOnly,
                   .context_length = 8192,
                   .prior_ttft_ms = 50,
                   .quality = 0.7};
  TierProfile cloud{.name = "cloud",
                    .price_input_per_mtok = 2.5,
                    .price_output_per_mtok = 10,
                    .prior_ttft_ms = 400,
                    .quality = 0.95};
  RouterConfig config;
  config.complexity_model = default_complexity_model_path();
  auto r = Router::create(config, {edge, cloud});
  if (!r.ok()) {
    config.complexity_model = "none";
    r = Router::create(config, {edge, cloud});
  }
  return std::move(r).value();
}

void BM_Decide(benchmark::State& state) {
  static const auto router = make_router();
  const std::string prompt = make_prompt(static_cast<size_t>(state.range(0)));
  std::string_view text = prompt;
  RouteInput in;
  in.texts = std::span<const std::string_view>(&text, 1);
  std::vector<double> us;
  us.reserve(1 << 16);
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    Decision d = router->decide(in);
    benchmark::DoNotOptimize(d);
    us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
                     .count());
  }
  std::sort(us.begin(), us.end());
  state.counters["p50_us"] = us[us.size() / 2];
  state.counters["p99_us"] = us[std::min(us.size() - 1, us.size() * 99 / 100)];
  state.counters["complexity_model"] = router->complexity() != nullptr ? 1 : 0;
}
BENCHMARK(BM_Decide)->Arg(200)->Arg(4096)->Arg(65536)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace foreshore::route

BENCHMARK_MAIN();
