// Sensitivity scan time per prompt: p50/p99 (counters p50_us, p99_us) for
// 200 B, 4 KiB and 64 KiB prompts of mixed prose, code and numbers with a few
// PII items, plus hostile 64 KiB inputs. The routing decision as a whole must
// stay under p99 100 us at 4 KiB and 1 ms at 64 KiB, so this part must be a
// fraction of that.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_fixtures.h"
#include "route/sensitivity.h"

namespace {

using foreshore::route::SensitivityDetector;

const SensitivityDetector& detector() {
  return foreshore::bench::default_detector();
}

// Deterministic mixed text: sentences, numbers, dates, versions, a code line;
// one PII item (email, phone, card, IP, key) per ~1.5 KiB.
std::string prompt(size_t bytes) {
  static const char* kWords[] = {
      "the",     "model",   "request", "latency", "budget", "we",      "should",    "compare",
      "results", "across",  "edge",    "cloud",   "tiers",  "please",  "summarize", "report",
      "for",     "quarter", "revenue", "grew",    "by",     "percent", "and",       "costs",
      "fell",    "while",   "users",   "asked",   "about",  "pricing", "in",        "Europe"};
  static const char* kNoise[] = {"in 2023",
                                 "version 1.2.3",
                                 "on 2024-05-17",
                                 "at 10:30",
                                 "$1,299.00",
                                 "3.14159",
                                 "std::vector<int> v;",
                                 "#42",
                                 "https://example.com/docs?id=7"};
  static const char* kPii[] = {"contact jane.doe@example.com",
                               "call +44 20 7946 0958",
                               "card 4111 1111 1111 1111",
                               "server 10.12.0.7",
                               "key sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",
                               "IBAN GB82 WEST 1234 5698 7654 32",
                               "SSN 123-45-6789"};
  std::string out;
  uint32_t x = 12345;
  const auto next = [&] {
    x = x * 1103515245u + 12345u;
    return x >> 8;
  };
  size_t pii_at = 100;
  size_t pii = 0;
  while (out.size() < bytes) {
    if (out.size() >= pii_at) {
      out += kPii[pii++ % std::size(kPii)];
      out += ". ";
      pii_at += 1500;
    } else if (next() % 9 == 0) {
      out += kNoise[next() % std::size(kNoise)];
      out += ' ';
    } else {
      out += kWords[next() % std::size(kWords)];
      out += next() % 12 == 0 ? ". " : " ";
    }
  }
  out.resize(bytes);
  return out;
}

void run(benchmark::State& state, const std::string& text) {
  const auto& d = detector();
  std::vector<double> us;
  us.reserve(1 << 16);
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    auto result = d.scan(text);
    const auto t1 = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(result);
    us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  std::sort(us.begin(), us.end());
  const auto pct = [&](double p) { return us[std::min(us.size() - 1, size_t(p * us.size()))]; };
  state.counters["p50_us"] = pct(0.50);
  state.counters["p99_us"] = pct(0.99);
  state.counters["hits"] = static_cast<double>(d.scan(text).hits_total);
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
}

// `unit` repeated to at least 64 KiB: the hostile inputs.
std::string repeated_to_64kib(std::string_view unit) {
  std::string text;
  while (text.size() < 64 * 1024) text += unit;
  return text;
}

void BM_Scan200B(benchmark::State& state) {
  run(state, prompt(200));
}
void BM_Scan4KiB(benchmark::State& state) {
  run(state, prompt(4 * 1024));
}
void BM_Scan64KiB(benchmark::State& state) {
  run(state, prompt(64 * 1024));
}
void BM_Scan64KiBDigits(benchmark::State& state) {
  run(state, std::string(64 * 1024, '7'));
}
void BM_Scan64KiBSpacedDigits(benchmark::State& state) {
  run(state, repeated_to_64kib("12 34 "));
}

// Joined: one number of 32,768 digits spelled digit by digit.
void BM_Scan64KiBDigitByDigit(benchmark::State& state) {
  run(state, repeated_to_64kib("7 "));
}
// Folded: every character an HTML reference or percent-encoded.
void BM_Scan64KiBEscapes(benchmark::State& state) {
  run(state, repeated_to_64kib("&#52;%31"));
}

// Read out in words: 16,384 of them, folded into one number.
void BM_Scan64KiBNumberWords(benchmark::State& state) {
  run(state, repeated_to_64kib("one "));
}

BENCHMARK(BM_Scan200B);
BENCHMARK(BM_Scan4KiB);
BENCHMARK(BM_Scan64KiB);
BENCHMARK(BM_Scan64KiBDigits);
BENCHMARK(BM_Scan64KiBSpacedDigits);
BENCHMARK(BM_Scan64KiBDigitByDigit);
BENCHMARK(BM_Scan64KiBEscapes);
BENCHMARK(BM_Scan64KiBNumberWords);

}  // namespace

BENCHMARK_MAIN();
