// DynamicBatcher: Triton's dynamic batching for one model instance.
//
// Requests queue; one worker thread takes the oldest up to `max_batch` of
// them once the batch is full or the oldest has waited `max_queue_delay`,
// and runs one forward pass for the whole batch. The queue is bounded:
// a request beyond `max_queue` is refused at once (ResourceExhausted, which
// the HTTP front turns into 503 + Retry-After), never dropped later.
//
// drain() stops accepting (FailedPrecondition afterwards), runs every queued
// request without waiting for batches to fill, and joins the worker: every
// future handed out is fulfilled.
//
// Two ways in: submit() hands out a future per request; submit_all() queues
// many tagged requests under one lock and one wake-up, and their results
// come back through the Completion, once per batch, with their tags (Note
// [One thread for the front] in event_front.h: a front that reads a batch of
// requests per wake-up hands it over whole and gets its answers whole).
//
// Thread-safe: submit() from any thread. The batch function and the
// completion run on the worker thread only; the batch function must return
// one Result per input, in order.
#pragma once

#include <fmt/format.h>
#include <pthread.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "kiln/base/deadline.h"
#include "kiln/base/logging.h"
#include "kiln/base/status.h"
#include "kiln/serve/thread_cpus.h"

namespace kiln::serve {

struct BatcherOptions {
  int max_batch = 32;
  std::chrono::microseconds max_queue_delay{2000};
  std::size_t max_queue = 1024;  // queued requests (not counting the batch running)
  // The worker's CPUs (empty: the scheduler's choice); Note [The batch
  // worker's own core] (thread_cpus.h).
  std::vector<int> worker_cpus;
};

// One batch as it ran: what the metrics (and `kiln bench serve`'s
// breakdown of a request's time) need.
struct BatchRun {
  std::size_t size = 0;
  bool full = false;             // closed because max_batch requests waited
  double run_seconds = 0;        // the batch function (input building + forward pass)
  double queue_wait_sum_s = 0;   // every request's wait from submission to the batch's start
};

// Called on the worker thread after each batch (metrics).
struct BatchObserver {
  virtual ~BatchObserver() = default;
  virtual void on_batch(const BatchRun& run) = 0;
};

template <typename In, typename Out, typename Tag = std::uint64_t>
class DynamicBatcher {
 public:
  using BatchFn = std::function<std::vector<Result<Out>>(std::vector<In>& inputs)>;
  // The results of a batch's submit_all() requests, in the order they ran.
  using Completion = std::function<void(std::vector<std::pair<Tag, Result<Out>>>& done)>;

  // What submit_all() queued: the first `accepted` items; the rest were
  // refused with `refused` (queue full, or draining).
  struct Admission {
    std::size_t accepted = 0;
    Status refused;
  };

  // Starts the worker. `observer` may be null; it must outlive the batcher.
  // `complete` receives submit_all()'s results (none: submit_all() is not used).
  DynamicBatcher(BatcherOptions options, BatchFn run, BatchObserver* observer = nullptr,
                 Completion complete = nullptr)
      : options_(options),
        run_(std::move(run)),
        observer_(observer),
        complete_(std::move(complete)) {
    if (options_.max_batch < 1) options_.max_batch = 1;
    worker_ = std::thread([this] { loop(); });
  }
  ~DynamicBatcher() { drain(); }
  DynamicBatcher(const DynamicBatcher&) = delete;
  DynamicBatcher& operator=(const DynamicBatcher&) = delete;

  // Queues `input`; never blocks. ResourceExhausted when max_queue requests
  // wait already; FailedPrecondition once drain() began.
  Result<std::future<Result<Out>>> submit(In input) {
    std::unique_lock<std::mutex> lock(mu_);
    if (draining_) return failed_precondition("the server is draining (SIGTERM): not accepting");
    if (queue_.size() >= options_.max_queue) {
      return resource_exhausted(fmt::format("queue full: {} requests wait (max_queue {})",
                                            queue_.size(), options_.max_queue));
    }
    queue_.push_back(Pending{std::move(input), std::promise<Result<Out>>(), Tag{}, Clock::now()});
    auto future = queue_.back().promise->get_future();
    // Note [Wake the worker only when it can act]: the worker waits for either a
    // first request or a full batch; any other notify wakes it only to check
    // its predicate and sleep again, a context switch per request.
    const bool wake =
        queue_.size() == 1 || queue_.size() == static_cast<std::size_t>(options_.max_batch);
    lock.unlock();
    if (wake) cv_.notify_one();
    return future;
  }

  // Queues every item it can under one lock, waking the worker at most once;
  // never blocks. Moves the accepted items out of `items`.
  Admission submit_all(std::vector<std::pair<Tag, In>>& items) {
    Admission a;
    if (!complete_) {
      a.refused = failed_precondition("submit_all on a batcher without a completion");
      return a;
    }
    std::unique_lock<std::mutex> lock(mu_);
    if (draining_) {
      a.refused = failed_precondition("the server is draining (SIGTERM): not accepting");
      return a;
    }
    const std::size_t before = queue_.size();
    const auto now = Clock::now();
    for (auto& [tag, input] : items) {
      if (queue_.size() >= options_.max_queue) {
        a.refused = resource_exhausted(fmt::format("queue full: {} requests wait (max_queue {})",
                                                   queue_.size(), options_.max_queue));
        break;
      }
      queue_.push_back(Pending{std::move(input), std::nullopt, std::move(tag), now});
      ++a.accepted;
    }
    const auto max = static_cast<std::size_t>(options_.max_batch);
    // Note [Wake the worker only when it can act].
    const bool wake = a.accepted > 0 && (before == 0 || (before < max && queue_.size() >= max));
    lock.unlock();
    if (wake) cv_.notify_one();
    return a;
  }

  // Stops accepting, runs what is queued, joins the worker. Idempotent.
  void drain() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      draining_ = true;
    }
    cv_.notify_one();
    if (worker_.joinable()) worker_.join();
  }

  // Requests waiting for a batch (the autoscaler's metric).
  std::size_t queue_length() const {
    std::lock_guard<std::mutex> lock(mu_);
    return queue_.size();
  }
  // Requests in the batch running now.
  std::size_t running() const {
    std::lock_guard<std::mutex> lock(mu_);
    return running_;
  }

 private:
  struct Pending {
    In input;
    std::optional<std::promise<Result<Out>>> promise;  // submit(); else the tag's completion
    Tag tag;
    Clock::time_point enqueued;
  };

  // job: forms batches and runs them, until drained and empty.
  void loop() {
    // Named for per-thread CPU accounting (`kiln bench serve`, top -H).
    pthread_setname_np(pthread_self(), "kiln-batch");
    if (Status pinned = pin_calling_thread(options_.worker_cpus); !pinned.is_ok()) {
      log()->warn("serve: the batch worker runs unpinned: {}", pinned.to_string());
    }
    const auto max = static_cast<std::size_t>(options_.max_batch);
    while (true) {
      std::vector<Pending> batch;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return draining_ || !queue_.empty(); });
        if (queue_.empty()) return;  // draining and nothing left
        // Wait for the batch to fill, at most until the oldest request has
        // waited max_queue_delay; a drain stops the waiting, not the work.
        const auto flush_at = queue_.front().enqueued + options_.max_queue_delay;
        cv_.wait_until(lock, flush_at, [&] { return draining_ || queue_.size() >= max; });
        const std::size_t n = std::min(max, queue_.size());
        batch.reserve(n);
        for (std::size_t i = 0; i < n; ++i) {
          batch.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
        running_ = n;
      }
      run_batch(batch);
      std::lock_guard<std::mutex> lock(mu_);
      running_ = 0;
    }
  }

  void run_batch(std::vector<Pending>& batch) {
    std::vector<In> inputs;
    inputs.reserve(batch.size());
    for (auto& p : batch) inputs.push_back(std::move(p.input));
    const auto start = Clock::now();
    BatchRun stats{.size = batch.size(),
                   .full = batch.size() >= static_cast<std::size_t>(options_.max_batch)};
    for (const auto& p : batch) {
      stats.queue_wait_sum_s += std::chrono::duration<double>(start - p.enqueued).count();
    }
    std::vector<Result<Out>> outputs = run_(inputs);
    stats.run_seconds = seconds_since(start);
    std::vector<std::pair<Tag, Result<Out>>> done;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      Result<Out> out = i < outputs.size() ? std::move(outputs[i])
                                           : Result<Out>(internal_error(fmt::format(
                                                 "the model returned {} results for a batch of {}",
                                                 outputs.size(), batch.size())));
      if (batch[i].promise) {
        batch[i].promise->set_value(std::move(out));
      } else {
        done.emplace_back(std::move(batch[i].tag), std::move(out));
      }
    }
    if (!done.empty()) complete_(done);
    if (observer_ != nullptr) observer_->on_batch(stats);
  }

  BatcherOptions options_;
  BatchFn run_;
  BatchObserver* observer_;
  Completion complete_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending> queue_;  // GUARDED_BY(mu_)
  std::size_t running_ = 0;    // GUARDED_BY(mu_)
  bool draining_ = false;      // GUARDED_BY(mu_)
  std::thread worker_;         // job: batch formation and the forward passes
};

}  // namespace kiln::serve
