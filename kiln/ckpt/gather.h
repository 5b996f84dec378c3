// Whole tensors from every rank's share of a checkpoint.
//
// A state loaded for rank r of W (MemoryTier::recover, load_latest with a
// communicator) holds some rows of each tensor: even_rows(shape[0], r, W)
// after the loader's split, or the rows the rank saved (a 3D run's canonical
// rows, where a rank holds only the parameters of its pipeline stage). A
// job that needs the tensors whole (data parallelism, or a 3D run that cuts
// its own shards out of them) gets them from the shares the ranks already
// hold, with one allgatherv: reading them from storage would throw away the
// point of the in-memory tier.
#pragma once

#include <chrono>

#include "kiln/base/status.h"
#include "kiln/ckpt/state.h"
#include "kiln/comm/communicator.h"

namespace kiln::ckpt {

// Collective over `comm`. Each rank's `share` holds any rows of any tensors;
// together the ranks must hold every row of every tensor at least once (a
// row held twice is taken from the lowest rank holding it, and sent once).
// Returns this rank's state with every tensor any rank holds, whole
// (row_offset 0, rows shape[0]): its own entries in their order, then the
// tensors only other ranks held; blobs stay this rank's own.
// InvalidArgument, on every rank and before any tensor bytes move, naming
// the tensor: rows no rank holds, ranks that disagree on a tensor's dtype or
// shape, a share whose bytes do not match its rows.
// DeadlineExceeded/Aborted from the collectives.
Result<LoadedState> gather_whole_tensors(LoadedState share, comm::Communicator& comm,
                                         std::chrono::milliseconds timeout);

}  // namespace kiln::ckpt
