#include "kiln/serve/growing_pool.h"

#include <algorithm>

namespace kiln::serve {

GrowingThreadPool::GrowingThreadPool(std::size_t min_threads, std::size_t max_threads)
    : max_threads_(std::max<std::size_t>(1, max_threads)) {
  std::lock_guard<std::mutex> lock(mutex_);
  const std::size_t n = std::min(min_threads, max_threads_);
  for (std::size_t i = 0; i < n; ++i) threads_.emplace_back([this] { work(); });
  started_ = n;
  idle_ = n;
}

GrowingThreadPool::~GrowingThreadPool() { shutdown(); }

void GrowingThreadPool::enqueue(std::function<void()> fn) {
  {
    std::unique_lock<std::mutex> lock(mutex_);
    if (shutdown_) {
      // No thread is left to run it (httplib stops enqueuing first; this
      // only keeps a late job from being lost): run it here.
      lock.unlock();
      fn();
      return;
    }
    jobs_.push_back(std::move(fn));
    // Every queued job has a free thread, or a new one, until the cap.
    if (jobs_.size() > idle_ && threads_.size() < max_threads_) {
      threads_.emplace_back([this] { work(); });
      ++started_;
      ++idle_;
    }
  }
  cond_.notify_one();
}

void GrowingThreadPool::shutdown() {
  std::vector<std::thread> threads;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    shutdown_ = true;
    threads.swap(threads_);
  }
  cond_.notify_all();
  for (auto& t : threads) t.join();
}

std::size_t GrowingThreadPool::threads() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return started_;
}

void GrowingThreadPool::work() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    cond_.wait(lock, [this] { return !jobs_.empty() || shutdown_; });
    if (jobs_.empty()) return;  // shutdown, nothing left to run
    std::function<void()> fn = std::move(jobs_.front());
    jobs_.pop_front();
    --idle_;
    lock.unlock();
    fn();
    lock.lock();
    ++idle_;
  }
}

}  // namespace kiln::serve
