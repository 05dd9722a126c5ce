#include "serve/worker_pool.h"

#include <malloc.h>

#include <algorithm>
#include <utility>

namespace foreshore::serve {

ElasticPool::ElasticPool(size_t max_threads, size_t min_threads,
                         std::chrono::milliseconds idle_timeout, observe::Gauge* workers)
    : max_threads_(max_threads),
      min_threads_(std::min(min_threads, max_threads)),
      idle_timeout_(idle_timeout),
      workers_(workers) {}

void ElasticPool::enqueue(std::function<void()> fn) {
  {
    std::lock_guard lock(mu_);
    jobs_.push_back(std::move(fn));
    if (jobs_.size() > idle_ && threads_.size() < max_threads_) {
      threads_.emplace_back([this] { work(); });
      workers_->set(static_cast<double>(threads_.size()));
      return;
    }
  }
  cv_.notify_one();
}

void ElasticPool::shutdown() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  // Once stopping_ is set no thread retires, so threads_ changes no more.
  for (auto& t : threads_) t.join();
  std::lock_guard lock(mu_);
  if (retired_.joinable()) retired_.join();
}

void ElasticPool::work() {
  std::unique_lock lock(mu_);
  while (true) {
    ++idle_;
    const bool woken =
        cv_.wait_for(lock, idle_timeout_, [&] { return stopping_ || !jobs_.empty(); });
    --idle_;
    if (!woken) {
      if (threads_.size() > min_threads_) return retire(lock);
      continue;
    }
    if (jobs_.empty()) return;  // stopping, and nothing left to run
    std::function<void()> fn = std::move(jobs_.front());
    jobs_.pop_front();
    lock.unlock();
    fn();
    lock.lock();
  }
}

void ElasticPool::retire(std::unique_lock<std::mutex>& lock) {
  const auto self = std::find_if(threads_.begin(), threads_.end(), [](const std::thread& t) {
    return t.get_id() == std::this_thread::get_id();
  });
  std::thread previous = std::exchange(retired_, std::move(*self));
  threads_.erase(self);
  workers_->set(static_cast<double>(threads_.size()));
  const bool last = threads_.size() == min_threads_;
  lock.unlock();
  if (previous.joinable()) previous.join();
  if (last) malloc_trim(0);
}

}  // namespace foreshore::serve
