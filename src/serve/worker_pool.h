// The HTTP gateway's worker threads: started as connections arrive, retired
// when idle after a burst.
#pragma once

#include <httplib.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "observe/metrics.h"

namespace foreshore::serve {

// Threads an idle gateway keeps: enough for health checks and a few clients.
constexpr size_t kMinWorkerThreads = 8;

// httplib's own pool starts every thread up front; this one starts them as
// connections arrive, so an idle gateway stays small while a busy one can
// still hold many keep-alive connections (httplib serves each on one thread).
// After a burst, threads beyond `min_threads` that stay idle for `idle_timeout`
// exit, and the last one to go hands the freed heap back to the system: a
// burst of 512 connections otherwise leaves 512 threads' stacks and malloc
// arenas resident for the life of the process.
class ElasticPool : public httplib::TaskQueue {
 public:
  ElasticPool(size_t max_threads, size_t min_threads, std::chrono::milliseconds idle_timeout,
              observe::Gauge* workers);

  void enqueue(std::function<void()> fn) override;

  void shutdown() override;

 private:
  void work();

  // Runs on the retiring thread, which cannot join itself: it parks its own
  // handle for the next one to retire (or shutdown) to join, and joins the
  // previous one's, so an exited thread's stack is freed promptly.
  void retire(std::unique_lock<std::mutex>& lock);

  const size_t max_threads_;
  const size_t min_threads_;
  const std::chrono::milliseconds idle_timeout_;
  observe::Gauge* const workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  std::thread retired_;
  size_t idle_ = 0;
  bool stopping_ = false;
};

}  // namespace foreshore::serve
