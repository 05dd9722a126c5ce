// Kernel throughput against the machine's memory bandwidth, and thread-pool
// dispatch latency.
//
// Decode is a matrix-vector product per weight matrix, so its speed bound is
// weight bytes / memory bandwidth. "cold" benchmarks cycle through copies of
// the matrix totalling several times the L3 size, as a model's layers do, so
// every weight comes from DRAM; "hot" ones reuse one matrix (cache speed).
// Counters: GB (per second) of weight bytes read, and bw_frac = that / the
// probed read bandwidth with the same thread count.
#include <benchmark/benchmark.h>
#include <immintrin.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/kernels.h"
#include "engine/thread_pool.h"

namespace foreshore::engine {
namespace {

size_t l3_bytes() {
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  return l3 > 0 ? static_cast<size_t>(l3) : size_t{32} << 20;
}

// Working sets this large cannot live in the cache.
size_t cold_bytes() {
  return std::clamp(4 * l3_bytes(), size_t{256} << 20, size_t{2} << 30) / 4096 * 4096;
}

// One cold_bytes() buffer shared by every benchmark and faulted in once;
// it lives until exit.
uint8_t* arena() {
  static uint8_t* buf = [] {
    auto* b = static_cast<uint8_t*>(std::aligned_alloc(4096, cold_bytes()));
    std::memset(b, 1, cold_bytes());
    return b;
  }();
  return buf;
}

// Sums 32-byte loads over [begin, end); 4 independent accumulators keep
// enough loads in flight to saturate one core's share of the bandwidth.
// AVX2 in this function only, the rest of the program being built for
// baseline x86-64: the probe needs a CPU with AVX2, as the kernels it is
// compared with do.
__attribute__((target("avx2"))) uint64_t read_sum(const uint8_t* p, size_t begin, size_t end) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = begin; i + 128 <= end; i += 128) {
    a0 = _mm256_add_epi64(a0, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i)));
    a1 = _mm256_add_epi64(a1, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
    a2 = _mm256_add_epi64(a2, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 64)));
    a3 = _mm256_add_epi64(a3, _mm256_load_si256(reinterpret_cast<const __m256i*>(p + i + 96)));
  }
  const __m256i s = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
  return static_cast<uint64_t>(_mm256_extract_epi64(s, 0) + _mm256_extract_epi64(s, 1) +
                               _mm256_extract_epi64(s, 2) + _mm256_extract_epi64(s, 3));
}

// Read bandwidth in GB/s of a buffer several times the L3 size, best of a
// few passes, with `threads` threads each streaming its own contiguous part.
// Measured right before each kernel it is compared with, since a shared
// machine's bandwidth drifts.
double probe_bandwidth(int threads) {
  const size_t bytes = cold_bytes();
  const uint8_t* buf = arena();
  ThreadPool pool(threads);
  double best = 0.0;
  for (int pass = 0; pass < 3; ++pass) {
    std::atomic<uint64_t> sink{0};
    const auto t0 = std::chrono::steady_clock::now();
    pool.run_on_all([&](int t, int n) {
      const size_t part = bytes / static_cast<size_t>(n) / 128 * 128;
      sink += read_sum(buf, part * static_cast<size_t>(t), part * static_cast<size_t>(t + 1));
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    benchmark::DoNotOptimize(sink.load());
    best = std::max(best, static_cast<double>(bytes) / s / 1e9);
  }
  return best;
}

void BM_MemoryBandwidth(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  const size_t bytes = cold_bytes();
  const uint8_t* buf = arena();
  ThreadPool pool(threads);
  for (auto _ : state) {
    std::atomic<uint64_t> sink{0};
    pool.run_on_all([&](int t, int n) {
      const size_t part = bytes / static_cast<size_t>(n) / 128 * 128;
      sink += read_sum(buf, part * static_cast<size_t>(t), part * static_cast<size_t>(t + 1));
    });
    benchmark::DoNotOptimize(sink.load());
  }
  state.counters["GB"] = benchmark::Counter(static_cast<double>(bytes) * 1e-9,
                                            benchmark::Counter::kIsIterationInvariantRate);
  state.counters["buffer_MiB"] = static_cast<double>(bytes >> 20);
}

struct MatvecCase {
  TensorType type;
  int64_t rows, cols, batch;
  int threads;
  bool cold;
  // The weights repacked as a model load repacks them (interleave_weights),
  // where the level has kernels for that.
  bool interleaved = false;
};

std::string type_name(TensorType t) {
  return tensor_type_name(static_cast<uint32_t>(t));
}

// Random weights quantized once per type and size: rows never split a block,
// so the bytes serve any shape with that many elements.
const std::vector<uint8_t>& quantized_weights(TensorType type, int64_t elements) {
  static std::map<std::pair<TensorType, int64_t>, std::vector<uint8_t>> cache;
  auto& bytes = cache[{type, elements}];
  if (bytes.empty()) {
    constexpr int64_t kChunk = 4096;
    const auto traits = *tensor_type_traits(static_cast<uint32_t>(type));
    bytes.resize(tensor_row_bytes(traits, static_cast<uint64_t>(elements)));
    std::mt19937 rng(1);
    std::normal_distribution<float> dist(0.0f, 0.05f);
    std::vector<float> chunk(kChunk);
    for (int64_t e = 0; e < elements; e += kChunk) {
      for (auto& v : chunk) v = dist(rng);
      quantize_row(type, chunk.data(),
                   bytes.data() + tensor_row_bytes(traits, static_cast<uint64_t>(e)), kChunk);
    }
  }
  return bytes;
}

void BM_Matmul(benchmark::State& state, MatvecCase c) {
  const auto traits = *tensor_type_traits(static_cast<uint32_t>(c.type));
  const size_t row_bytes = tensor_row_bytes(traits, static_cast<uint64_t>(c.cols));
  const size_t matrix_bytes = row_bytes * static_cast<size_t>(c.rows);

  const std::vector<uint8_t>& proto = quantized_weights(c.type, c.rows * c.cols);
  // Repacked: the copies hold the repacked rows, which the kernels read,
  // and `data` stays the original.
  std::vector<uint8_t> repacked;
  if (c.interleaved) {
    const WeightMatrix w{c.type, proto.data(), c.rows, c.cols, row_bytes};
    repacked.resize(interleaved_bytes(w));
    if (!interleave_weights(w, repacked.data())) {
      state.SkipWithError("no repacked kernel for this type at this level");
      return;
    }
  }
  const uint8_t* source = c.interleaved ? repacked.data() : proto.data();
  const size_t copies = c.cold ? cold_bytes() / matrix_bytes : 1;
  const uint8_t* set = source;
  if (c.cold) {
    for (size_t i = 0; i < copies; ++i) {
      std::memcpy(arena() + i * matrix_bytes, source, matrix_bytes);
    }
    set = arena();
  }

  std::vector<float> x(static_cast<size_t>(c.batch * c.cols));
  std::mt19937 rng(2);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (auto& v : x) v = dist(rng);
  std::vector<float> y(static_cast<size_t>(c.batch * c.rows));
  std::vector<uint8_t> scratch(activation_scratch_bytes(c.type, c.cols, c.batch));
  ThreadPool pool(c.threads);

  const double probe = c.cold ? probe_bandwidth(c.threads) : 0.0;
  size_t next = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (auto _ : state) {
    const uint8_t* copy = set + next * matrix_bytes;
    const WeightMatrix w{c.type,    c.interleaved ? proto.data() : copy, c.rows, c.cols,
                         row_bytes, c.interleaved ? copy : nullptr};
    matmul(w, x.data(), c.batch, y.data(), scratch, pool);
    benchmark::ClobberMemory();
    next = next + 1 == copies ? 0 : next + 1;
  }
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  state.SetLabel(std::string(cpu_level_name(cpu_level())));
  const double gb = static_cast<double>(matrix_bytes) * 1e-9;
  state.counters["GB"] = benchmark::Counter(gb, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["Gop/s"] =
      benchmark::Counter(2e-9 * static_cast<double>(c.rows * c.cols * c.batch),
                         benchmark::Counter::kIsIterationInvariantRate);
  if (c.cold && elapsed > 0.0) {
    state.counters["probe_GB/s"] = probe;
    state.counters["bw_frac"] = gb * static_cast<double>(state.iterations()) / elapsed / probe;
  }
}

void BM_Dispatch(benchmark::State& state) {
  ThreadPool pool(static_cast<int>(state.range(0)));
  std::atomic<int64_t> sink{0};
  for (auto _ : state) {
    pool.parallel_for(2, [&](int64_t b, int64_t) { sink.fetch_add(b, std::memory_order_relaxed); });
  }
  benchmark::DoNotOptimize(sink.load());
}

// Dispatch with the workers asleep (idle longer than their spin), as after a
// pause between requests: the cost of a condition-variable wake-up.
void BM_DispatchAfterIdle(benchmark::State& state) {
  ThreadPool pool(static_cast<int>(state.range(0)));
  std::atomic<int64_t> sink{0};
  for (auto _ : state) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    const auto t0 = std::chrono::steady_clock::now();
    pool.run_on_all([&](int t, int) { sink.fetch_add(t, std::memory_order_relaxed); });
    state.SetIterationTime(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  benchmark::DoNotOptimize(sink.load());
}

void register_all() {
  benchmark::RegisterBenchmark("BM_MemoryBandwidth", BM_MemoryBandwidth)
      ->Arg(1)
      ->Arg(2)
      ->Unit(benchmark::kMillisecond)
      ->UseRealTime();
  const TensorType types[] = {TensorType::kQ4_0, TensorType::kIQ4_NL, TensorType::kIQ4_XS,
                              TensorType::kQ5_0, TensorType::kQ5_1,   TensorType::kQ8_0,
                              TensorType::kQ2_K, TensorType::kQ3_K,   TensorType::kQ4_K,
                              TensorType::kQ5_K, TensorType::kQ6_K,   TensorType::kF16,
                              TensorType::kBF16, TensorType::kF32};
  std::vector<MatvecCase> cases;
  for (TensorType t : types) {
    for (int threads : {1, 2}) {
      cases.push_back({t, 2048, 8192, 1, threads, true});
      cases.push_back({t, 8192, 2048, 1, threads, true});
    }
    cases.push_back({t, 576, 1536, 1, 2, false});
    cases.push_back({t, 576, 1536, 1, 2, true});
    // One thread in cache: the kernels' own speed, decode (one row) and one
    // eight-row group, for A/B runs of the CPU levels.
    cases.push_back({t, 576, 1536, 1, 1, false});
    cases.push_back({t, 576, 1536, 8, 1, false});
    // Decode with the matrix in L2 for the quantized types (418 KB at Q8_0's
    // 8.5 bits per weight, L2 being 1 MiB on the dev VM): the kernel's
    // instruction throughput without L3 latency.
    cases.push_back({t, 256, 1536, 1, 1, false});
    cases.push_back({t, 2048, 8192, 32, 2, true});
    cases.push_back({t, 576, 1536, 32, 2, false});
  }
  // Q4_0 repacked at load (the avx512 level's kernels), decode and prompts.
  for (int threads : {1, 2}) {
    cases.push_back({TensorType::kQ4_0, 2048, 8192, 1, threads, true, true});
    cases.push_back({TensorType::kQ4_0, 8192, 2048, 1, threads, true, true});
  }
  cases.push_back({TensorType::kQ4_0, 576, 1536, 1, 1, false, true});
  cases.push_back({TensorType::kQ4_0, 576, 1536, 8, 1, false, true});
  cases.push_back({TensorType::kQ4_0, 576, 1536, 32, 2, false, true});
  for (const auto& c : cases) {
    const std::string name = "BM_Matmul/" + type_name(c.type) + "/" + std::to_string(c.rows) + "x" +
                             std::to_string(c.cols) + "/batch:" + std::to_string(c.batch) +
                             "/threads:" + std::to_string(c.threads) + (c.cold ? "/cold" : "/hot") +
                             (c.interleaved ? "/repacked" : "");
    benchmark::RegisterBenchmark(name.c_str(), [c](benchmark::State& s) { BM_Matmul(s, c); })
        ->Unit(benchmark::kMicrosecond)
        ->UseRealTime()
        ->MinTime(0.3);
  }
  benchmark::RegisterBenchmark("BM_Dispatch", BM_Dispatch)
      ->Arg(1)
      ->Arg(2)
      ->Unit(benchmark::kNanosecond)
      ->UseRealTime();
  benchmark::RegisterBenchmark("BM_DispatchAfterIdle", BM_DispatchAfterIdle)
      ->Arg(2)
      ->Unit(benchmark::kMicrosecond)
      ->UseManualTime()
      ->Iterations(200);
}

}  // namespace
}  // namespace foreshore::engine

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  foreshore::engine::register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
