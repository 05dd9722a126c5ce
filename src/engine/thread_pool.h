// A fixed pool of worker threads for data-parallel loops in the forward pass.
//
// Decode dispatches hundreds of parallel loops per token, so a dispatch is a
// single atomic store that spinning workers see within a few hundred
// nanoseconds; workers block on a condition variable only after spinning
// idle for a while, and the caller wakes them only when one is asleep. On an
// oversubscribed machine the caller runs the share of any worker that has
// not started yet rather than wait for it to be scheduled. No call allocates.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace foreshore::engine {

// The most threads a pool is asked for; front ends refuse more (a typo such
// as -t 100000 would otherwise ask the system for that many threads).
inline constexpr int kMaxThreads = 1024;

class ThreadPool {
 public:
  // threads <= 0 means one per available core. The calling thread takes part,
  // so a pool of N runs N-1 workers. Where the system refuses a thread (its
  // limit on processes reached), the pool runs with those it got: size()
  // says how many.
  explicit ThreadPool(int threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return size_; }

  // Splits [0, n) into contiguous chunks and runs fn(begin, end) on each,
  // returning when all are done. Not reentrant: fn must not call parallel_for.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn);

  // Runs fn(thread_index, thread_count) once on every thread of the pool.
  // thread_index is a slot in [0, thread_count): each slot runs exactly once
  // and never concurrently with itself, so per-slot scratch indexed by it is
  // safe, but a slot may run on any pool thread (see the state_ comment).
  void run_on_all(const std::function<void(int, int)>& fn);

  // Overloads for lambdas and other callables: they are called through a
  // pointer, never copied into a std::function (which allocates once the
  // captures outgrow its small buffer).
  template <typename F>
  requires(!std::is_same_v<std::remove_cvref_t<F>, std::function<void(int64_t, int64_t)>> &&
           std::is_invocable_v<F&, int64_t, int64_t>) void parallel_for(int64_t n, F&& fn) {
    const ForContext ctx{n, &fn, [](const void* p, int64_t b, int64_t e) {
                           (*static_cast<std::remove_reference_t<F>*>(const_cast<void*>(p)))(b, e);
                         }};
    dispatch_for(ctx);
  }
  template <typename F>
  requires(!std::is_same_v<std::remove_cvref_t<F>, std::function<void(int, int)>> &&
           std::is_invocable_v<F&, int, int>) void run_on_all(F&& fn) {
    dispatch(
        [](const void* p, int thread, int count) {
          (*static_cast<std::remove_reference_t<F>*>(const_cast<void*>(p)))(thread, count);
        },
        &fn);
  }

 private:
  using Job = void (*)(const void* ctx, int thread, int count);
  struct ForContext {
    int64_t n;
    const void* fn;
    void (*call)(const void* fn, int64_t begin, int64_t end);
  };

  // Runs job(ctx, t, size_) for every t in [0, size_) and waits for all.
  void dispatch(Job job, const void* ctx);
  void dispatch_for(const ForContext& ctx);
  void worker_loop();
  // Claims and runs the unclaimed slots of generation gen, if any remain.
  void run_slots(uint32_t gen);
  void wait_for_slots();

  int size_ = 1;
  std::vector<std::thread> workers_;

  // Written by the caller before the state_ store that publishes them.
  Job job_ = nullptr;
  const void* ctx_ = nullptr;

  // Generation (high 32 bits) and next unclaimed slot (low 32 bits). Slot 0
  // is the caller's; any thread may claim the others, so a worker the OS has
  // not scheduled yet never holds up the caller, who runs its slot instead.
  // One word, so a claim can never land in a different generation.
  alignas(64) std::atomic<uint64_t> state_{0};
  // Slots 1.. finished in the current generation.
  alignas(64) std::atomic<int> done_{0};
  alignas(64) std::atomic<int> sleeping_workers_{0};
  std::atomic<bool> caller_sleeping_{false};
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
};

}  // namespace foreshore::engine
