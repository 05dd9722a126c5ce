// Edge engine speed: prompt processing and generation tokens/s on models with
// real models' shapes (random weights written by our own GGUF writer; speed
// does not depend on weight values), bytes of weights read per generated token,
// and that traffic as a share of this machine's measured memory bandwidth.
//
// Models are generated once into $FORESHORE_BENCH_DIR (default /tmp/foreshore-bench).
// Run: build/bench/engine_bench --benchmark_counters_tabular=true
#include <benchmark/benchmark.h>
#include <immintrin.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "engine/engine.h"

namespace foreshore::engine {
namespace {

std::string bench_dir() {
  const char* env = std::getenv("FORESHORE_BENCH_DIR");
  return env != nullptr ? env : "/tmp/foreshore-bench";
}

std::shared_ptr<const Model> load_preset(const std::string& preset, TensorType type) {
  const auto dir = std::filesystem::path(bench_dir());
  std::filesystem::create_directories(dir);
  const auto path = dir / (preset + "-" + tensor_type_name(static_cast<uint32_t>(type)) + ".gguf");
  if (!std::filesystem::exists(path)) {
    auto spec = synthetic_model_preset(preset, type);
    if (!spec) return nullptr;
    const auto tmp = path.string() + ".tmp";
    if (!write_synthetic_model(*spec, tmp).ok()) return nullptr;
    std::filesystem::rename(tmp, path);
  }
  auto model = Model::load(path.string());
  return model.ok() ? *model : nullptr;
}

int bench_threads() {
  const char* env = std::getenv("FORESHORE_BENCH_THREADS");
  return env != nullptr ? std::atoi(env) : static_cast<int>(std::thread::hardware_concurrency());
}

// Reads n floats with 32-byte loads, 4 accumulators keeping enough loads in
// flight; returns one lane of the sum. AVX2 in this function only, the rest
// of the program being built for baseline x86-64.
__attribute__((target("avx2"))) float read_floats(const float* p, size_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  for (size_t i = 0; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + i + 24));
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  return lanes[0];
}

// Read bandwidth of a buffer far larger than the last-level cache, all threads.
double measured_bandwidth_gbps() {
  static const double value = [] {
    const size_t bytes = size_t{1} << 30;
    std::vector<float> buffer(bytes / sizeof(float), 1.0f);
    ThreadPool pool(bench_threads());
    double best = 0.0;
    for (int rep = 0; rep < 5; ++rep) {
      const auto start = std::chrono::steady_clock::now();
      std::vector<float> sums(static_cast<size_t>(pool.size()));
      pool.run_on_all([&](int t, int n) {
        const size_t per = buffer.size() / static_cast<size_t>(n);
        sums[static_cast<size_t>(t)] =
            read_floats(buffer.data() + per * static_cast<size_t>(t), per);
      });
      benchmark::DoNotOptimize(sums);
      const double s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      best = std::max(best, static_cast<double>(bytes) / s / 1e9);
    }
    return best;
  }();
  return value;
}

void BM_MemoryBandwidth(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(measured_bandwidth_gbps());
  state.counters["GB/s"] = measured_bandwidth_gbps();
}
BENCHMARK(BM_MemoryBandwidth)->Iterations(1)->Unit(benchmark::kMillisecond);

void run_model(benchmark::State& state, const std::string& preset, TensorType type, bool decode) {
  auto model = load_preset(preset, type);
  if (!model) {
    state.SkipWithError("could not generate or load the model");
    return;
  }
  ThreadPool pool(bench_threads());
  ContextOptions opts;
  opts.context_length = 512;
  opts.max_batch = 128;
  auto ctx = InferenceContext::create(model, opts);
  if (!ctx.ok()) {
    state.SkipWithError(ctx.error().message.c_str());
    return;
  }
  const int32_t prompt_len = 128;
  const int32_t gen_len = 32;
  std::vector<TokenId> prompt(prompt_len);
  for (int32_t i = 0; i < prompt_len; ++i) prompt[static_cast<size_t>(i)] = 3 + (i * 7919) % 250;
  int64_t tokens = 0;
  for (auto _ : state) {
    (*ctx)->truncate(0);
    if (decode) {
      state.PauseTiming();
      (void)(*ctx)->evaluate(std::span<const TokenId>(prompt).first(16), pool);
      state.ResumeTiming();
      TokenId t = 5;
      for (int32_t i = 0; i < gen_len; ++i) {
        auto logits = (*ctx)->evaluate(std::span<const TokenId>(&t, 1), pool);
        t = static_cast<TokenId>(std::max_element(logits->begin(), logits->end()) -
                                 logits->begin());
      }
      tokens += gen_len;
    } else {
      auto logits = (*ctx)->evaluate(prompt, pool);
      benchmark::DoNotOptimize(logits);
      tokens += prompt_len;
    }
  }
  state.counters["tok/s"] =
      benchmark::Counter(static_cast<double>(tokens), benchmark::Counter::kIsRate);
  state.counters["threads"] = pool.size();
  state.counters["weights_MB"] = static_cast<double>(model->weight_bytes()) / 1e6;
  if (decode) {
    // Every weight is read once per generated token; the bound is bandwidth / weight bytes.
    const double bw = measured_bandwidth_gbps();
    state.counters["bound_tok/s"] = bw * 1e9 / static_cast<double>(model->weight_bytes());
    state.counters["GB/s"] = benchmark::Counter(
        static_cast<double>(tokens) * static_cast<double>(model->weight_bytes()) / 1e9,
        benchmark::Counter::kIsRate);
  }
}

void register_all() {
  struct Config {
    const char* preset;
    TensorType type;
  };
  const Config configs[] = {
      {"smollm2-135m", TensorType::kQ8_0}, {"smollm2-135m", TensorType::kQ4_0},
      {"smollm2-135m", TensorType::kF16},  {"qwen2.5-0.5b", TensorType::kQ8_0},
      {"qwen2.5-0.5b", TensorType::kQ4_0}, {"llama3.2-1b", TensorType::kQ4_K},
      {"llama3.2-1b", TensorType::kQ6_K},  {"llama3.2-1b", TensorType::kQ4_0},
  };
  for (const auto& c : configs) {
    const std::string name =
        std::string(c.preset) + "/" + tensor_type_name(static_cast<uint32_t>(c.type));
    for (bool decode : {false, true}) {
      benchmark::RegisterBenchmark(
          ((decode ? "generate/" : "prompt/") + name).c_str(),
          [c, decode](benchmark::State& s) { run_model(s, c.preset, c.type, decode); })
          ->Unit(benchmark::kMillisecond)
          ->MinTime(2.0)
          ->UseRealTime();
    }
  }
}

}  // namespace
}  // namespace foreshore::engine

int main(int argc, char** argv) {
  foreshore::engine::register_all();
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
