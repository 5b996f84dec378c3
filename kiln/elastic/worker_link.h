// The worker's side of `kiln run`: what a training loop calls so the agent
// can tell a slow step from a hung one and can ask for a clean stop.
//
//   auto& link = elastic::WorkerLink::instance();   // inert outside kiln run
//   for (...) { train_step(); link.heartbeat(); if (link.stop_requested()) { save(); break; } }
//
// heartbeat() writes one byte to the pipe named by KILN_HEARTBEAT_FD
// (non-blocking: a busy agent never stalls training). Under `kiln run`,
// SIGTERM (preemption, or the agent asking for a checkpoint boundary)
// sets stop_requested() instead of killing the process.
#pragma once

#include <atomic>

namespace kiln::elastic {

class WorkerLink {
 public:
  // The process's link, set up from the environment on first use.
  static WorkerLink& instance();

  // Whether this process runs under `kiln run`.
  bool active() const { return fd_ >= 0; }
  void heartbeat();
  bool stop_requested() const;

 private:
  WorkerLink();
  int fd_ = -1;
};

}  // namespace kiln::elastic
