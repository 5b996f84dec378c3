#include "kiln/comm/work.h"

#include <sched.h>

#include <fmt/format.h>

#include "kiln/comm/thread_role.h"
#include "kiln/comm/transport/waiting_callers.h"

namespace kiln::comm {

Work::Work(std::uint64_t seq, std::string what, std::function<Status(Deadline)> body,
           Engine* engine)
    : seq_(seq), what_(std::move(what)), body_(std::move(body)), engine_(engine) {}

void Work::run(Clock::duration op_timeout) {
  started_at_ = Clock::now();
  Status s = body_(Deadline::after(op_timeout));
  body_ = nullptr;  // release captured buffers' owners early
  finished_at_ = Clock::now();
  finish(std::move(s));
}

double Work::run_seconds() const {
  if (!test() || started_at_ == Clock::time_point{}) return 0;
  return std::chrono::duration<double>(finished_at_ - started_at_).count();
}

void Work::finish(Status s) {
  std::vector<std::function<void(const Status&)>> callbacks;
  {
    std::lock_guard lock(mu_);
    status_ = std::move(s);
    done_.store(true, std::memory_order_release);
    callbacks.swap(on_done_);
  }
  cv_.notify_all();
  // status_ no longer changes: read without the lock, which fn may need.
  for (auto& fn : callbacks) fn(status_);
}

void Work::on_done(std::function<void(const Status&)> fn) {
  {
    std::lock_guard lock(mu_);
    if (!done_.load(std::memory_order_acquire)) {
      on_done_.push_back(std::move(fn));
      return;
    }
  }
  fn(status_);
}

Status Work::status() const {
  std::lock_guard lock(mu_);
  return status_;
}

Status Work::wait(std::chrono::milliseconds timeout) {
  Deadline deadline = timeout == std::chrono::milliseconds::max() ? Deadline::never()
                                                                  : Deadline::after(timeout);
  if (test()) return status();
  // Note [A waiting caller's core is spare]: from here until it returns, this
  // thread computes nothing.
  transport::CallerWaiting waiting;
  // Run it here if the engine thread has not picked it up yet.
  if (!test() && engine_ != nullptr) engine_->help(this);
  // Then poll briefly (the engine may be about to finish it), then sleep.
  for (int i = 0; i < 64 && !test(); ++i) sched_yield();
  std::unique_lock lock(mu_);
  while (!done_.load(std::memory_order_acquire)) {
    if (deadline.is_never()) {
      cv_.wait(lock);
    } else if (cv_.wait_until(lock, deadline.at()) == std::cv_status::timeout && !test()) {
      return deadline_exceeded(
          fmt::format("{}: not complete after {} ms of waiting", what_, timeout.count()));
    }
  }
  return status_;
}

Engine::Engine(Clock::duration op_timeout) : op_timeout_(op_timeout) {
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() {
  std::deque<WorkPtr> left;
  {
    std::lock_guard lock(mu_);
    stop_ = true;
    left.swap(queue_);
  }
  cv_.notify_all();
  thread_.join();
  for (auto& w : left) w->finish(cancelled(w->what() + ": the communicator was destroyed"));
}

// Note [Deferred engine wake]: waking the engine thread costs a futex call
// and, when ranks are bound to cores, a preemption of the caller by the
// engine on its own core — more than a whole small collective. So while
// callers wait on their operations promptly (synchronous use:
// `allreduce(...)->wait()`), submit() does not wake the engine: the caller
// runs the operation itself in wait(), and the engine merely polls the queue
// every kPollPeriod, leaving fresh operations to their callers. An operation
// older than half a period was not waited on: the caller overlaps work with
// it, so the engine runs it and submit() goes back to waking the engine at
// once, until kPromptWaitsToDefer prompt waits in a row switch back. Guessing
// wrong costs one operation started up to kPollPeriod late. An engine idle
// for kIdlePollsBeforeDeepSleep polls stops polling; the next submit wakes it.
constexpr auto kPollPeriod = std::chrono::microseconds(500);
constexpr int kPromptWaitsToDefer = 4;
constexpr int kIdlePollsBeforeDeepSleep = 40;

// Note [Done is not busy]: the thread that ran an operation marks it done
// (its waiter returns) before it takes mu_ again to say it stopped running.
// A caller that destroys its communicator right after its last operation
// (a final barrier, then exit) must not count that operation as pending:
// ~Communicator would abort the group, and peers still finishing the same
// barrier would fail with "rank N aborted the group" while rank N itself
// succeeded (seen under load in EightRanksAndAFold/SixteenBitFloats at 8
// ranks on 2 cores, session 16; reproduced by widening that window).
bool Engine::busy() {
  std::lock_guard lock(mu_);
  return !queue_.empty() || (running_ && !running_work_->test());
}

void Engine::submit(const WorkPtr& w) {
  bool wake;
  {
    std::lock_guard lock(mu_);
    queue_.push_back(w);
    wake = sleep_ == Sleep::kDeep || (sleep_ == Sleep::kPolling && !defer_wake_ && !running_);
  }
  if (wake) cv_.notify_one();
}

bool Engine::help(const Work* target) {
  std::unique_lock lock(mu_);
  // A caller waiting on work it submitted moments ago is synchronous use,
  // whoever ends up running it. One waiting on work it issued long before
  // (DDP's buckets at the end of backward) overlapped it: deferring the wake
  // then would only have the engine poll every kPollPeriod through the next
  // forward and hold back the next backward's first bucket (each poll a
  // preemption of the training thread where ranks are bound to cores).
  const bool prompt = Clock::now() - target->submitted_at_ < kPollPeriod;
  if (prompt && ++prompt_waits_ >= kPromptWaitsToDefer) defer_wake_ = true;
  if (running_) return false;
  bool ran = false;
  while (!target->test() && !queue_.empty()) {
    WorkPtr w = std::move(queue_.front());
    queue_.pop_front();
    running_ = true;
    running_work_ = w.get();
    lock.unlock();
    w->run(op_timeout_);
    ran = true;
    lock.lock();
    running_ = false;
    running_work_ = nullptr;
  }
  if (!queue_.empty()) cv_.notify_one();  // hand the rest to the engine thread
  return ran;
}

void Engine::loop() {
  become_comm_thread("kiln-engine");
  std::unique_lock lock(mu_);
  int idle_polls = 0;
  while (!stop_) {
    if (queue_.empty() || running_) {
      if (idle_polls >= kIdlePollsBeforeDeepSleep) {
        sleep_ = Sleep::kDeep;
        cv_.wait(lock);
        idle_polls = 0;
      } else {
        sleep_ = Sleep::kPolling;
        // Only a poll that finds nothing at all counts as idle; a caller
        // running a long operation inline is not idleness.
        if (!running_) ++idle_polls;
        if (defer_wake_) {
          cv_.wait_for(lock, kPollPeriod);
        } else {
          cv_.wait(lock);
        }
      }
      sleep_ = Sleep::kAwake;
      continue;
    }
    idle_polls = 0;
    if (defer_wake_) {
      auto age = Clock::now() - queue_.front()->submitted_at_;
      if (age < kPollPeriod / 2) {  // its caller is probably about to wait on it
        sleep_ = Sleep::kPolling;
        cv_.wait_for(lock, kPollPeriod / 2 - age);
        sleep_ = Sleep::kAwake;
        continue;
      }
      defer_wake_ = false;  // nobody waited: the caller overlaps work
      prompt_waits_ = 0;
    }
    WorkPtr w = std::move(queue_.front());
    queue_.pop_front();
    running_ = true;
    running_work_ = w.get();
    lock.unlock();
    w->run(op_timeout_);
    lock.lock();
    running_ = false;
    running_work_ = nullptr;
  }
}

}  // namespace kiln::comm
