// Agreeing on an outcome that each rank reached alone (a file it read, a
// buffer it allocated), so that one rank's failure fails every rank at the
// same point, with the same error, instead of leaving the others blocked in
// the next collective until the failed rank's exit aborts the group.
#pragma once

#include <chrono>

#include "kiln/base/status.h"
#include "kiln/comm/communicator.h"

namespace kiln::comm {

// Collective over `comm`. OK on every rank when every rank's `local` is OK.
// Otherwise every rank returns the same error: the code of the lowest failed
// rank, and each failed rank's message prefixed with "rank N: " (joined with
// "; "). The exchange's own failure (Aborted/DeadlineExceeded) is returned
// as it is. One small allreduce when all went well.
Status agree(Communicator& comm, const Status& local, std::chrono::milliseconds timeout);

}  // namespace kiln::comm
