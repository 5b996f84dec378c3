// Whole tensors from every rank's share of a checkpoint.
//
// A state loaded for rank r of W (MemoryTier::recover, load_latest with a
// communicator) holds even_rows(shape[0], r, W) of each tensor. A
// data-parallel job holds every tensor whole on every rank, so it needs the
// whole tensors back; reading them from storage would throw away the point
// of the in-memory tier. gather_whole_tensors assembles them from the shares
// the ranks already hold, with one allgatherv.
#pragma once

#include <chrono>

#include "kiln/base/status.h"
#include "kiln/ckpt/state.h"
#include "kiln/comm/communicator.h"

namespace kiln::ckpt {

// Collective over `comm`, whose rank r's `share` holds rows
// even_rows(shape[0], r, size) of each tensor. Returns the state with every
// tensor whole (row_offset 0, rows shape[0]); blobs stay this rank's own.
// InvalidArgument when a share's rows are not the even split, or when the
// ranks hold different tensors (names, dtypes, shapes, order); the check
// runs before any bytes move, and every rank gets the same outcome.
// DeadlineExceeded/Aborted from the collectives.
Result<LoadedState> gather_whole_tensors(LoadedState share, comm::Communicator& comm,
                                         std::chrono::milliseconds timeout);

}  // namespace kiln::ckpt
