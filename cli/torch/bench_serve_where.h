// Where a served request's time goes, per ladder step of `kiln bench serve`'s
// batching part (Note [Where a request's time goes]): the replica's threads
// (the epoll front, the batch worker that runs the forward pass, the rest),
// the load generator's own thread and the bench's other threads, each as CPU
// µs per answered request and as µs per request spent runnable but waiting
// for a core (the scheduler's run-queue wait: two threads wanting one core);
// the host's busy cores; and the batches the replica formed (sizes, how many
// were full, queue wait, forward time per request), from its /metrics.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "kiln/base/deadline.h"

namespace kiln::cli {

// A thread's (or same-named threads') scheduler accounting so far.
struct ThreadTimes {
  double run_s = 0;   // on a CPU
  double wait_s = 0;  // runnable, waiting for one
  long voluntary = 0, involuntary = 0;  // context switches
  long minor_faults = 0, migrations = 0;  // page faults; moves to another CPU
  int threads = 0;
};

// Everything a step's breakdown compares before and after.
struct WhereSnapshot {
  Clock::time_point at;
  std::map<std::string, ThreadTimes> replica;  // by thread name (/proc/PID/task/*/comm)
  ThreadTimes load_gen;                        // the calling thread
  ThreadTimes bench;                           // every thread of this process
  double host_busy_s = 0, host_total_s = 0;    // /proc/stat, all CPUs
  std::map<std::string, double> metrics;       // the replica's /metrics series (empty: unread)
};

// Reads it all now. `replica_pid`: the replica process; `port`: its HTTP
// port, for /metrics. The load generator must run on the calling thread.
WhereSnapshot where_snapshot(pid_t replica_pid, int port);

// The step between `before` and `after`, per request answered (`answered`).
nlohmann::json where_between(const WhereSnapshot& before, const WhereSnapshot& after,
                             std::uint64_t answered);

}  // namespace kiln::cli
