#include "engine/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <system_error>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace foreshore::engine {
namespace {

// How long an idle thread polls before blocking. Decode leaves a few to tens
// of microseconds of serial work between parallel loops; a blocked worker
// takes a futex wake-up (several microseconds) to restart, so polling across
// those gaps is what keeps dispatch cheap, while an idle pool stops burning a
// core within a fraction of a millisecond.
constexpr auto kSpinTime = std::chrono::microseconds(200);
// After this long, pollers also yield, so a thread they wait for that shares
// their core (an oversubscribed machine) gets to run.
constexpr auto kYieldAfter = std::chrono::microseconds(20);

constexpr uint64_t kSlotMask = 0xFFFFFFFF;

inline uint32_t generation_of(uint64_t state) {
  return static_cast<uint32_t>(state >> 32);
}
inline uint32_t slot_of(uint64_t state) {
  return static_cast<uint32_t>(state & kSlotMask);
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Polls done() until it holds or the spin budget is spent.
template <typename Done>
bool spin_until(Done done) {
  if (done()) return true;
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (done()) return true;
      cpu_relax();
    }
    const auto elapsed = std::chrono::steady_clock::now() - start;
    if (elapsed >= kSpinTime) return done();
    if (elapsed >= kYieldAfter) std::this_thread::yield();
  }
}

}  // namespace

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  threads = std::min(threads, kMaxThreads);
  workers_.reserve(static_cast<size_t>(threads - 1));
  // Workers read size_ only once a dispatch has published work, after the
  // constructor has set it to the threads the system gave.
  for (int i = 1; i < threads; ++i) {
    try {
      workers_.emplace_back([this] { worker_loop(); });
    } catch (const std::system_error&) {
      break;
    }
  }
  size_ = static_cast<int>(workers_.size()) + 1;
}

ThreadPool::~ThreadPool() {
  stop_.store(true);
  // A generation with no slots left wakes everyone without giving work.
  const uint32_t gen = generation_of(state_.load()) + 1;
  state_.store((static_cast<uint64_t>(gen) << 32) | static_cast<uint32_t>(size_));
  { std::lock_guard<std::mutex> lock(mu_); }
  start_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  const ForContext ctx{n, &fn, [](const void* f, int64_t begin, int64_t end) {
                         (*static_cast<const std::function<void(int64_t, int64_t)>*>(f))(begin,
                                                                                         end);
                       }};
  dispatch_for(ctx);
}

void ThreadPool::run_on_all(const std::function<void(int, int)>& fn) {
  dispatch(
      [](const void* f, int thread, int count) {
        (*static_cast<const std::function<void(int, int)>*>(f))(thread, count);
      },
      &fn);
}

void ThreadPool::dispatch_for(const ForContext& ctx) {
  if (ctx.n <= 0) return;
  if (size_ == 1 || ctx.n == 1) {
    ctx.call(ctx.fn, 0, ctx.n);
    return;
  }
  dispatch(
      [](const void* p, int thread, int count) {
        const auto& c = *static_cast<const ForContext*>(p);
        const int64_t begin = c.n * thread / count;
        const int64_t end = c.n * (thread + 1) / count;
        if (begin < end) c.call(c.fn, begin, end);
      },
      &ctx);
}

void ThreadPool::dispatch(Job job, const void* ctx) {
  if (size_ == 1) {
    job(ctx, 0, 1);
    return;
  }
  job_ = job;
  ctx_ = ctx;
  done_.store(0, std::memory_order_relaxed);
  const uint32_t gen = generation_of(state_.load(std::memory_order_relaxed)) + 1;
  // Sequentially consistent with the sleeping_workers_ increment in
  // worker_loop: either the worker sees the new generation before it blocks,
  // or this thread sees it asleep and wakes it.
  state_.store((static_cast<uint64_t>(gen) << 32) | 1);
  if (sleeping_workers_.load() > 0) {
    // Taking the mutex orders the notify after a worker that was between its
    // check and its wait has started waiting.
    { std::lock_guard<std::mutex> lock(mu_); }
    start_cv_.notify_all();
  }
  job(ctx, 0, size_);
  run_slots(gen);
  wait_for_slots();
}

void ThreadPool::run_slots(uint32_t gen) {
  uint64_t s = state_.load(std::memory_order_acquire);
  while (generation_of(s) == gen && slot_of(s) < static_cast<uint32_t>(size_)) {
    if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) {
      job_(ctx_, static_cast<int>(slot_of(s)), size_);
      if (done_.fetch_add(1) + 1 == size_ - 1 && caller_sleeping_.load()) {
        { std::lock_guard<std::mutex> lock(mu_); }
        done_cv_.notify_one();
      }
      s = state_.load(std::memory_order_acquire);
    }
  }
}

void ThreadPool::wait_for_slots() {
  const int slots = size_ - 1;
  if (spin_until([&] { return done_.load(std::memory_order_acquire) == slots; })) return;
  std::unique_lock<std::mutex> lock(mu_);
  caller_sleeping_.store(true);
  done_cv_.wait(lock, [&] { return done_.load() == slots; });
  caller_sleeping_.store(false);
}

void ThreadPool::worker_loop() {
  uint32_t seen = 0;
  for (;;) {
    auto fresh = [&] { return generation_of(state_.load(std::memory_order_acquire)) != seen; };
    if (!spin_until(fresh)) {
      std::unique_lock<std::mutex> lock(mu_);
      sleeping_workers_.fetch_add(1);
      start_cv_.wait(lock, [&] { return generation_of(state_.load()) != seen; });
      sleeping_workers_.fetch_sub(1);
    }
    seen = generation_of(state_.load(std::memory_order_acquire));
    if (stop_.load()) return;
    run_slots(seen);
  }
}

}  // namespace foreshore::engine
