// Work: the handle of one asynchronous collective (c10d's Work).
//
// Operations of a communicator complete in the order they were issued. A
// Work is done when its operation succeeded or failed; wait() blocks at most
// `timeout` and returns the operation's Status (DeadlineExceeded if the
// timeout passed first — the operation itself keeps its own op timeout).
// Any thread may wait on or test a Work.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <deque>
#include <string>
#include <thread>
#include <vector>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"

namespace kiln::comm {

class Engine;

class Work {
 public:
  Work(std::uint64_t seq, std::string what, std::function<Status(Deadline)> body, Engine* engine);

  // Blocks until done or `timeout`. While waiting, the calling thread may run
  // queued operations itself (up to and including this one) if the engine
  // thread is idle: a small collective then costs no thread hand-off.
  Status wait(std::chrono::milliseconds timeout = std::chrono::milliseconds::max());
  bool test() const { return done_.load(std::memory_order_acquire); }
  // The result; ok while not done.
  Status status() const;
  // Calls `fn` with the result once the operation is done: at once, on this
  // thread, if it already is; else on the thread that finishes it (the
  // engine's, or a waiter running it inline), after wait() can see it done.
  // `fn` must not block: later operations wait behind it.
  void on_done(std::function<void(const Status&)> fn);

  std::uint64_t seq() const { return seq_; }
  const std::string& what() const { return what_; }
  // Seconds the operation itself ran (not its time queued behind earlier
  // ones): what bytes are divided by for its bandwidth. 0 until done.
  double run_seconds() const;
  // When it was issued, began and ended running (the last two valid once done).
  Clock::time_point submitted_at() const { return submitted_at_; }
  Clock::time_point started_at() const { return started_at_; }
  Clock::time_point finished_at() const { return finished_at_; }

 private:
  friend class Engine;
  void run(Clock::duration op_timeout);
  void finish(Status s);

  const std::uint64_t seq_;
  Clock::time_point submitted_at_ = Clock::now();
  // Written by the thread that runs the operation before done_ is released;
  // read after test() or wait() saw done_ (acquire), so no lock.
  Clock::time_point started_at_{};
  Clock::time_point finished_at_{};
  const std::string what_;
  std::function<Status(Deadline)> body_;
  Engine* engine_;
  std::atomic<bool> done_{false};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  Status status_;  // guarded by mu_
  std::vector<std::function<void(const Status&)>> on_done_;  // guarded by mu_; run once
};

using WorkPtr = std::shared_ptr<Work>;

// Engine: runs a communicator's operations one at a time, in issue order, on
// its own thread — or on a waiting caller's thread when the engine is idle.
class Engine {
 public:
  explicit Engine(Clock::duration op_timeout);
  ~Engine();  // drains nothing: pending work fails with Cancelled

  void submit(const WorkPtr& w);
  // Runs queued work up to and including `target` on the calling thread if no
  // other thread is running work. Returns whether it ran anything.
  bool help(const Work* target);
  void set_op_timeout(Clock::duration t) { op_timeout_ = t; }
  // Whether work is queued, or running and not yet done (Note [Done is not
  // busy], work.cc).
  bool busy();

 private:
  void loop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<WorkPtr> queue_;  // guarded by mu_
  bool running_ = false;       // guarded by mu_: some thread executes work
  const Work* running_work_ = nullptr;  // guarded by mu_: which, while running_
  bool stop_ = false;          // guarded by mu_
  // Note [Deferred engine wake]; all guarded by mu_.
  enum class Sleep { kAwake, kPolling, kDeep };
  Sleep sleep_ = Sleep::kAwake;
  bool defer_wake_ = true;  // callers wait on their ops promptly: don't wake the engine
  int prompt_waits_ = 0;    // since the engine last found an op nobody waited for
  Clock::duration op_timeout_;
  std::thread thread_;
};

}  // namespace kiln::comm
