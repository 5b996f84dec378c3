// Per-rank aggregation: every rank's window summary reaches every rank (so
// rank 0, which prints and records the verdict, sees stragglers).
#pragma once

#include <chrono>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/comm/communicator.h"
#include "kiln/diag/summary.h"

namespace kiln::diag {

// A collective over `comm`: every rank must call it at the same point of the
// step sequence (e.g. after end_step of every N-th step), in the same order
// relative to the trainer's other collectives. Blocks at most `timeout`;
// fails with the communicator's error (Aborted, DeadlineExceeded) or with
// Internal if a peer's summary has another layout (a mixed-version job).
// Returns one summary per rank, in rank order.
Result<std::vector<RankSummary>> gather_summaries(comm::Communicator& comm, const RankSummary& mine,
                                                  std::chrono::milliseconds timeout);

}  // namespace kiln::diag
