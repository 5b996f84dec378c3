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
#include <span>
#include <string>

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
//
// Note [Gathered in place]: a tensor restored in place (MemoryTier::recover
// into a RecoverTarget, its entry's in_place set) is completed where it
// lies: `in_place` names its whole memory (a model's parameter), in which
// this rank's rows already lie at their place, and the other ranks' rows are
// received straight into theirs — one allgatherv per such tensor, no copy of
// the state, no buffer of its size. Every rank must have restored the tensor
// in place; its entry comes back in_place, whole, with no data. (Held in
// rank order, one range a rank, as even_rows splits; otherwise its rows go
// through the buffer the other tensors use and are copied in.)
// InvalidArgument on every rank, naming the tensor, for an in-place entry
// with no target or a target of another size or row count, or a tensor in place on some
// ranks only.
struct WholeTarget {
  std::string name;
  std::byte* data = nullptr;
  std::size_t bytes = 0;  // the whole tensor's
  std::int64_t rows = 0;  // its shape[0] as checkpointed (1 for a scalar)
};
Result<LoadedState> gather_whole_tensors(LoadedState share, comm::Communicator& comm,
                                         std::chrono::milliseconds timeout,
                                         std::span<const WholeTarget> in_place = {});

}  // namespace kiln::ckpt
