// The worker's side of `kiln run`: what a training loop calls so the agent
// can tell a slow step from a hung one and can ask for a clean stop.
//
//   auto& link = elastic::WorkerLink::instance();   // inert outside kiln run
//   for (...) { train_step(); link.heartbeat(); if (link.stop_requested()) { save(); break; } }
//   { auto busy = link.busy(Deadline::after(10min)); evaluate(); }
//   link.finishing(Deadline::after(10min));  // no more steps: save, evaluate, exit
//
// heartbeat() writes one byte to the pipe named by KILN_HEARTBEAT_FD
// (non-blocking: a busy agent never stalls training). Under `kiln run`,
// SIGTERM (preemption, or the agent asking for a checkpoint boundary)
// sets stop_requested() instead of killing the process.
//
// Note [What a heartbeat byte means]: any byte shows the worker is alive;
// a NUL byte says only that (a busy beat), any other byte also that a step
// finished (the agent counts those as steps; `printf x >&3` from a shell
// worker is one).
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "kiln/base/deadline.h"

namespace kiln::elastic {

// Beats (NUL bytes) on `fd` every `interval` from a thread of its own, from
// construction until destruction or `until`, whichever comes first.
//
// Note [Busy beats end at the deadline]: a stretch that is not a step (an
// evaluation, the last checkpoint and the wait for it) may outlast the
// agent's --hang-timeout on a large model without being hung. The beats
// vouch for it only up to the deadline the work itself runs under: work
// stuck past its own deadline still goes quiet and is caught as a hang,
// and SIGSTOP stops this thread with the rest of the process.
class BusyBeat {
 public:
  BusyBeat(int fd, Clock::duration interval, Deadline until);
  ~BusyBeat();  // stops and joins the thread
  BusyBeat(const BusyBeat&) = delete;
  BusyBeat& operator=(const BusyBeat&) = delete;

  // Moves the end to `until` (work that made progress earns a new bound).
  // False, changing nothing, once the beats stopped.
  bool extend(Deadline until);

  // Whether the thread still beats (false once the end passed).
  bool beating() const { return beating_.load(); }

 private:
  void loop(int fd, Clock::duration interval);

  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;  // guarded by mu_
  Deadline until_;     // guarded by mu_
  std::atomic<bool> beating_{true};
  std::thread thread_;
};

class WorkerLink {
 public:
  // How often busy() beats: well under any sensible --hang-timeout.
  static constexpr Clock::duration kBusyInterval = std::chrono::milliseconds(500);

  // The process's link, set up from the environment on first use.
  static WorkerLink& instance();

  // Whether this process runs under `kiln run`.
  bool active() const { return fd_ >= 0; }
  // A step finished.
  void heartbeat();
  // Keeps the worker from looking hung while the returned object lives, up
  // to `until` (see BusyBeat). nullptr outside kiln run.
  [[nodiscard]] std::unique_ptr<BusyBeat> busy(Deadline until) const;
  // No more steps: the last checkpoint, the last evaluation, closing the
  // communicators and exiting. Beats until the process exits or `until`
  // (a later call moves `until`), so a slow finish or exit on a loaded
  // machine is not taken for a hang. No-op outside kiln run. Call from one
  // thread.
  void finishing(Deadline until);
  bool stop_requested() const;

 private:
  WorkerLink();
  int fd_ = -1;
  // Never destroyed while it beats: it must beat through the process's
  // exit (static destructors, LibTorch's teardown) and ends with it.
  BusyBeat* finishing_ = nullptr;
};

}  // namespace kiln::elastic
