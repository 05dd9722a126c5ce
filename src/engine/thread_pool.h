// A fixed pool of worker threads for data-parallel loops in the forward pass.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace sy::engine {

class ThreadPool {
 public:
  // threads <= 0 means one per available core. The calling thread takes part,
  // so a pool of N runs N-1 workers.
  explicit ThreadPool(int threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return size_; }

  // Splits [0, n) into contiguous chunks and runs fn(begin, end) on each,
  // returning when all are done. Not reentrant: fn must not call parallel_for.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn);

  // Runs fn(thread_index, thread_count) once on every thread of the pool.
  void run_on_all(const std::function<void(int, int)>& fn);

 private:
  void worker_loop(int index);

  int size_ = 1;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  const std::function<void(int, int)>* job_ = nullptr;
  uint64_t generation_ = 0;
  int pending_ = 0;
  bool stop_ = false;
};

}  // namespace sy::engine
