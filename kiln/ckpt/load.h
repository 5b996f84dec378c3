// Loading a checkpoint, onto any world size.
//
// Tensors are re-sliced: rank r of the loading world gets even_rows(shape[0],
// r, world) of every tensor, assembled from whichever saved shards hold those
// rows (4 ranks saved, 3 load: rank 1 reads rows from saved ranks 1 and 2).
// Blobs: rank r gets saved rank (r % saved world size)'s blobs. Every entry
// read is checked against its manifest checksum.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <string_view>

#include "kiln/base/status.h"
#include "kiln/ckpt/state.h"
#include "kiln/comm/communicator.h"

namespace kiln::ckpt {

struct LoadOptions {
  int rank = 0;
  int world_size = 1;
  // With world_size > 1: the ranks agree on the step (a step any rank cannot
  // load is skipped by all). Collective; used by nothing else meanwhile.
  comm::Communicator* comm = nullptr;
  std::chrono::milliseconds timeout{600000};  // bounds each collective
};

// Which entries a load reads, by name; empty: every entry.
using EntryFilter = std::function<bool(std::string_view name)>;

// Loads one committed step directory for `rank` of `world_size`, holding a
// StepReadLock on it throughout. NotFound (no manifest: uncommitted),
// DataLoss (missing/truncated/corrupt shard, rows no shard holds). With
// `keep`, only the entries it accepts are read (and checksummed): a server
// that needs the weights skips the optimizer's state.
Result<LoadedState> load_step(const std::string& step_dir, int rank, int world_size,
                              const EntryFilter& keep = {});

// Loads the newest committed step under `root` that every rank can load;
// steps that fail are skipped with a warning saying why. NotFound if none.
// An object store's URL as `root` is load_latest_remote through a scratch
// cache of this process, removed afterwards.
// Blocks for the reads (and, with a communicator, the agreement).
Result<LoadedState> load_latest(const std::string& root, const LoadOptions& options);

}  // namespace kiln::ckpt
