// Loading the newest checkpoint from the remote tier (remote.h), e.g. after
// the shared filesystem was lost.
//
//   auto st = load_latest_remote("s3://bucket/run7", "/local/ckpt-cache", {});
//
// Tries remote committed steps (those with a manifest) newest first: downloads
// the manifest and every shard it names into <cache_dir>/step-N, then loads
// that with load_step (re-slicing, checksums). A step whose download or load
// fails is skipped with a warning naming it. A complete step already in the
// cache is loaded without downloading again (load_step still checks every
// checksum). The cache directory belongs to this process (one per rank).
#pragma once

#include <string>

#include "kiln/base/status.h"
#include "kiln/ckpt/format.h"
#include "kiln/ckpt/load.h"
#include "kiln/ckpt/state.h"
#include "kiln/objstore/object_store.h"

namespace kiln::ckpt {

// Fetches one shard of remote step `step` that `manifest` names into the
// local file `local`: one object, or its chunk objects in parallel, each
// checked against its size and checksum (DataLoss naming the chunk). The
// size of the whole file is checked against the manifest. Every reader of a
// remote step (training's loader, serve's weight cache) goes through it, so
// each reads both layouts.
Status fetch_remote_shard(objstore::ObjectStore& store, std::int64_t step,
                          const ShardRecord& shard, const std::string& local,
                          Deadline deadline);

// Downloads step `step` (manifest and every shard it names; a shard stored
// as chunk objects is fetched chunk by chunk in parallel, each checked
// against its checksum, into one local shard file) into
// <cache_dir>/step-N through a .partial directory renamed into place, so a
// crash never leaves a step that looks complete; creates cache_dir if need
// be. Returns that directory.
Result<std::string> download_remote_step(objstore::ObjectStore& store, std::int64_t step,
                                         const std::string& cache_dir, Deadline deadline);

// With several ranks (options.comm), rank 0's listing decides which step is
// tried and a step is taken only if every rank loaded it, as in load_latest.
// Each step's download is bounded by options.timeout. NotFound if no remote step loads.
Result<LoadedState> load_latest_remote(objstore::ObjectStore& store, const std::string& cache_dir,
                                       const LoadOptions& options);

// The same on open_object_store(url) (s3://BUCKET/PREFIX or file://DIR).
Result<LoadedState> load_latest_remote(const std::string& url, const std::string& cache_dir,
                                       const LoadOptions& options);

}  // namespace kiln::ckpt
