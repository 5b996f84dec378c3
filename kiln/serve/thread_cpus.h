// Which CPUs a replica's two busy threads run on.
//
// Note [The batch worker's own core]: a replica with one torch thread has
// two threads that work per request: the epoll front (HTTP, the body's
// pixels, the answers) and the batch worker (the forward pass). Left to the
// scheduler on a small host, the front's wake-ups (one per answered batch)
// land on the worker's core and preempt its forward pass, and the worker
// migrates between cores with its cache. When the process may run on at
// least two CPUs, `split_cpus` gives the worker the last one to itself and
// the front the others. Opt-in (KILN_SERVE_PIN_THREADS=1, and `kiln bench
// serve --pin-load-gen` for its load generator): on the 2-core VM of
// session 14 the unpinned worker never waited for a core (run-queue wait
// 0-3 µs per request at the highest rate within the SLO) and pinning moved
// batching_gain by nothing the noise resolves (docs/perf.md, issue 20,
// session 14). Worth it where the front's or a neighbour's load does
// compete with the worker.
#pragma once

#include <vector>

#include "kiln/base/rank_cores.h"  // allowed_cpus()
#include "kiln/base/status.h"

namespace kiln::serve {

struct ThreadCpus {
  std::vector<int> front;  // empty: wherever the scheduler puts it
  std::vector<int> batch;
};

// The worker on the last of `allowed`, the front on the rest; nothing
// pinned when fewer than two are allowed. Pure.
ThreadCpus split_cpus(const std::vector<int>& allowed);

// Binds the calling thread to `cpus` (nothing to do when empty).
Status pin_calling_thread(const std::vector<int>& cpus);

}  // namespace kiln::serve
