// The commit protocol (docs/formats.md, "Commit protocol"), on a filesystem
// and on an object store: after every rank
// wrote and fsynced its shard in <root>/step-N.tmp/, the ranks exchange
// their shard records; if all succeeded, rank 0 writes manifest.json, fsyncs
// it and the directory, renames step-N.tmp to step-N, fsyncs <root>, and
// replaces <root>/latest atomically. A commit is that rename: a crash before
// it leaves only a .tmp directory that loaders ignore.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "kiln/base/status.h"
#include "kiln/ckpt/format.h"
#include "kiln/ckpt/fs.h"
#include "kiln/comm/communicator.h"
#include "kiln/objstore/object_store.h"

namespace kiln::ckpt {

struct CommitContext {
  std::string root;
  std::int64_t step = 0;
  int rank = 0;
  int world_size = 1;
  comm::Communicator* comm = nullptr;         // null only when world_size == 1
  std::chrono::milliseconds timeout{600000};  // bounds each collective
  Fs* fs = Fs::posix();                       // rank 0 writes the manifest and latest through it
};

// Collective: every rank calls it once per save with its own shard result.
// Blocks until the commit is decided. Returns the same outcome on every rank:
// ok once step-N is committed; otherwise the first failure with the ranks it
// came from (e.g. ResourceExhausted from a full disk on rank 2), after rank 0
// removed step-N.tmp. Aborted/DeadlineExceeded when the exchange itself fails
// (then the .tmp directory is left for retention to clear). If rank 0 dies
// after its rename, the step is committed although the others see Aborted:
// after re-forming, load_latest tells what was committed.
Status commit_step(const CommitContext& ctx, const Result<ShardRecord>& local);

// The same protocol for a checkpoint kept on an object store (ctx.root is
// its URL, ctx.fs unused): each rank has already uploaded its shard object
// (step-N/shard-RRRRR.bin, committed before it reports success); if all
// succeeded, rank 0 puts step-N/manifest.json, which commits the step (a
// step is committed iff its manifest object exists, remote.h); if any
// failed, rank 0 deletes the step's objects (those a manifest names stay if
// another attempt committed the step meanwhile). Same outcomes on every rank
// as commit_step.
Status commit_step_to_store(const CommitContext& ctx, objstore::ObjectStore& store,
                            const Result<ShardRecord>& local);

}  // namespace kiln::ckpt
