// How many threads of this process are blocked waiting for a collective
// (Work::wait), for the tcp coder's "is a core spare" question (Note [A
// waiting caller's core is spare]).
#pragma once

#include <atomic>

namespace kiln::comm::transport {

// Note [A waiting caller's core is spare]: a thread blocked until a
// collective finishes is not computing, so the core it would use is free for
// the communicator's own work right now, for as long as it waits: DDP's
// training thread once backward has returned, with the last buckets still
// crossing a slow link. The host-wide idle share (/proc/stat, looked at every
// 50 ms, Note [Coding only with a spare core]) says so only a look later:
// traced per chunk (docs/perf.md, issue 24, session 10), up to 33 chunks
// (8 MiB, ~65 ms of a 1 Gbit/s link) of the last buckets left as plain words
// after backward had returned. Counted per process: ranks on one host each
// free their own core. A thread that waits on a collective while others of
// its process compute (an asynchronous checkpoint, say) makes the coder
// spend CPU they may want; zstd's share of a core at a slow link's rate is
// small (~15% at 1 Gbit/s).
inline std::atomic<int>& callers_waiting_count() {
  static std::atomic<int> count{0};
  return count;
}

inline int callers_waiting() { return callers_waiting_count().load(std::memory_order_relaxed); }

// Counts the calling thread as waiting while alive.
class CallerWaiting {
 public:
  CallerWaiting() { callers_waiting_count().fetch_add(1, std::memory_order_relaxed); }
  ~CallerWaiting() { callers_waiting_count().fetch_sub(1, std::memory_order_relaxed); }
  CallerWaiting(const CallerWaiting&) = delete;
  CallerWaiting& operator=(const CallerWaiting&) = delete;
};

}  // namespace kiln::comm::transport
