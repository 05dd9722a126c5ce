// The learning router on the request path: a decision scores with the
// learner (features materialized once, base score, residual over the words)
// while labels are applied on the learner's thread. Measured with and
// without a stream of labels arriving, for 200 B, 4 KiB and 64 KiB prompts,
// against the router's budget (p99 <= 100 us at 4 KiB, <= 1 ms at 64 KiB),
// and with 5,000 labels kept (the most it keeps), which the neighbour search
// reads: each holds ten of 3,000 rare words and each word of the scored
// prompt with a probability just under the share where a word stops being
// searched (common_word_share), so every word of the prompt has about 2,400
// labels to visit: the worst case.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench_fixtures.h"
#include "route/online_learner.h"

namespace {

using foreshore::route::OnlineLearner;

// Labels near the prompt's words (see the top of this file).
void keep_labels(OnlineLearner& learner, const std::string& prompt, int count) {
  std::vector<std::string> prompt_words;
  std::istringstream in(prompt);
  for (std::string w; in >> w;) prompt_words.push_back(w);
  // Each distinct word once, so that its share of the labels is the probability.
  std::sort(prompt_words.begin(), prompt_words.end());
  prompt_words.erase(std::unique(prompt_words.begin(), prompt_words.end()), prompt_words.end());
  std::mt19937_64 rng(7);
  std::bernoulli_distribution shares(foreshore::route::LearnerOptions{}.common_word_share - 0.01);
  std::uniform_int_distribution<int> rare(0, 2999);
  const auto& hashing = foreshore::bench::shipped_complexity_model()->hashing();
  for (int i = 0; i < count; ++i) {
    std::string text;
    for (int j = 0; j < 10; ++j) text += "rare" + std::to_string(rare(rng)) + "word ";
    for (const auto& w : prompt_words) {
      if (shares(rng)) text += w + " ";
    }
    foreshore::route::LearnerLabel l;
    l.features = foreshore::route::extract_complexity_features(text, hashing);
    l.gain = (i % 3 == 0) ? 1.0 : 0.0;
    learner.apply(l);
  }
}

// state.range(1): 1 when labels keep arriving on the learner's thread;
// state.range(2): labels kept before the measurement; state.range(3): topics
// (LearnerOptions::topics; their cost per decision is the prompt's words
// times the topics, whatever the labels kept).
void BM_LearnerScore(benchmark::State& state) {
  const std::string prompt = foreshore::bench::mixed_prompt(static_cast<size_t>(state.range(0)));
  // A fixed blend: the search runs on every decision, whatever it learned.
  foreshore::route::LearnerOptions options;
  options.initial_blend = 0.5;
  options.blend_learning_rate = 0.0;
  options.topics = static_cast<size_t>(state.range(3));
  OnlineLearner learner(foreshore::bench::shipped_complexity_model(), options);
  keep_labels(learner, foreshore::bench::mixed_prompt(4096), static_cast<int>(state.range(2)));
  learner.start();
  std::atomic<bool> stop{false};
  std::thread labeller;
  if (state.range(1) == 1) {
    labeller = std::thread([&] {
      int i = 0;
      while (!stop.load()) {
        foreshore::route::LearnerLabel l;
        l.features = foreshore::route::extract_complexity_features(
            "label number " + std::to_string(i) + " about glaciers",
            foreshore::bench::shipped_complexity_model()->hashing());
        l.gain = (i++ % 2) ? 1.0 : 0.0;
        learner.submit(std::move(l));
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    });
  }
  std::vector<double> ns;
  ns.reserve(1 << 16);
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    benchmark::DoNotOptimize(learner.score(prompt));
    const auto t1 = std::chrono::steady_clock::now();
    if (ns.size() < ns.capacity()) {
      ns.push_back(std::chrono::duration<double, std::nano>(t1 - t0).count());
    }
  }
  stop.store(true);
  if (labeller.joinable()) labeller.join();
  learner.stop();
  std::sort(ns.begin(), ns.end());
  if (!ns.empty()) {
    state.counters["p50_us"] = ns[ns.size() / 2] / 1e3;
    state.counters["p99_us"] = ns[std::min(ns.size() - 1, ns.size() * 99 / 100)] / 1e3;
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_LearnerScore)
    ->Args({200, 0, 0, 0})
    ->Args({4096, 0, 0, 0})
    ->Args({65536, 0, 0, 0})
    ->Args({4096, 1, 0, 0})
    ->Args({200, 0, 5000, 0})
    ->Args({4096, 0, 5000, 0})
    ->Args({65536, 0, 5000, 0})
    ->Args({4096, 1, 5000, 0})
    ->Args({200, 0, 500, 0})
    ->Args({200, 0, 500, 32})
    ->Args({4096, 0, 500, 0})
    ->Args({4096, 0, 500, 32})
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
