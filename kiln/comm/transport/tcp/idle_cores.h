#pragma once

// How many cores this process could code on right now: the tcp coder's
// question before it spends CPU on zstd (Note [Coding only with a spare
// core], pair.cc).

#include <cstdint>

namespace kiln::comm::transport::tcp {

// Ticks (/proc/stat, USER_HZ) summed over the CPUs the calling thread may
// run on (its affinity mask; every online CPU when it cannot be read).
struct CpuTicks {
  std::uint64_t total = 0;  // every state
  std::uint64_t idle = 0;   // idle + iowait
  int cores = 0;            // CPUs counted; 0 when /proc/stat cannot be read
};
CpuTicks allowed_cpu_ticks();

// Idle cores among those the calling thread may run on, averaged since the
// previous look. Looks at /proc/stat at most every 50 ms, process-wide; in
// between (and when it cannot be read) returns the last answer, 0 at first.
// Thread-safe.
double idle_cores_recently();

}  // namespace kiln::comm::transport::tcp
