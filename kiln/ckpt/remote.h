// The remote checkpoint tier (docs/formats.md, "Remote tier"): committed
// steps copied to an object store (kiln::objstore::ObjectStore: s3:// or file://)
// so they outlive the shared filesystem.
//
//   REMOTE/step-N/shard-00000.bin ...   uploaded by each rank's writer thread
//   REMOTE/step-N/manifest.json         uploaded by rank 0 LAST
//
// A checkpoint written straight to a store (CheckpointOptions::root a URL)
// has the same shape; with ObjectLayout::kChunks (the default) each shard is
//   REMOTE/step-N/shard-00000.<attempt>.chunk-00000 ... chunk-000KK
// listed, with each chunk's size and checksum, in the manifest.
//
// A remote step is committed iff its manifest exists: a crash mid-upload
// leaves shard objects without a manifest, which loaders ignore and
// retention removes once a newer step is committed remotely.
//
// Note [Shards as chunk objects]: a step on an object store is committed by
// one object, its manifest, put last by rank 0. A shard uploaded as one
// multipart upload adds a second commit per shard, the completion, which
// makes the parts one object; the manifest already makes the step atomic,
// so that second commit buys nothing, and it costs: s3rver's
// CompleteMultipartUpload reads every part back and writes the object
// again, 43-53% of a 1 GiB checkpoint's upload + commit (docs/perf.md,
// issue 19, session 14), and an upload a killed rank abandoned is invisible
// to a listing and billed by S3 until it is aborted or a lifecycle rule
// removes it. So a shard is stored as part-sized chunk objects (the
// multipart writer's part size and in-flight count, so the same bounded
// memory), each a plain PUT (objstore::ChunkedUpload), and the manifest
// lists each chunk's key, size and checksum. Abandoned chunks are ordinary
// objects under their step's prefix: a listing shows them, and the next
// commit (objects the manifest does not name) or retention (manifest-less
// steps below the newest commit) deletes them. Reads fetch the chunks in
// parallel by key and check each one. torch.distributed.checkpoint writes
// several files per rank the same way. How much the completion costs on
// real S3 is the service's affair (its API reference says only that it
// "concatenates all the parts" and "could take several minutes to
// finalize"); the chunk layout does not depend on it, and saves the two
// extra requests per shard and the wait for the slowest shard's completion.
// ObjectLayout::kMultipart stays selectable (a bucket policy or a tool that
// wants one object per shard), and loads read both layouts (checkpoints of
// earlier versions are multipart).
//
// Note [One attempt's chunks]: a chunk's name carries a tag drawn afresh
// by each attempt at a shard (shard_chunk_name), so two attempts at the
// same step never share a key. Without it, a stray rank of an earlier,
// uncommitted attempt at step N (a generation the launcher has not killed
// yet) whose upload fails would, in ChunkedUpload::abort, delete by key the
// chunks a later attempt had committed under the same names. Now an abort
// only ever deletes objects its own attempt stored; the earlier attempt's
// leftovers are strays that the commit of step N (objects its manifest
// does not name) or retention removes. Readers need nothing: the manifest
// lists each chunk's name.
#pragma once

#include <atomic>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"
#include "kiln/ckpt/format.h"
#include "kiln/ckpt/retention.h"
#include "kiln/objstore/object_store.h"

namespace kiln::ckpt {

// "step-N/<file>": the key of a step's file in the remote store.
std::string remote_key(std::int64_t step, const std::string& file);

// Uploads the local file `local_path` as step `step`'s `file`.
Status upload_step_file(objstore::ObjectStore& store, std::int64_t step, const std::string& file,
                        const std::string& local_path, Deadline deadline);

// Steps with a manifest in the remote store, newest first.
Result<std::vector<std::int64_t>> list_remote_committed_steps(objstore::ObjectStore& store,
                                                              Deadline deadline);

// Every step with objects in the store, newest first, committed or not (an
// upload in flight or interrupted); for `kiln ckpt ls`.
struct RemoteStepSummary {
  std::int64_t step = 0;
  bool committed = false;
  std::size_t objects = 0;
  std::uint64_t bytes = 0;
};
Result<std::vector<RemoteStepSummary>> summarize_remote_steps(objstore::ObjectStore& store,
                                                              Deadline deadline);

// Step `step`'s manifest, read from the store. NotFound if it has none.
Result<Manifest> read_remote_manifest(objstore::ObjectStore& store, std::int64_t step,
                                      Deadline deadline);

// Run by rank 0 after a remote commit (so never before a newer one exists):
// deletes the remote steps `policy` does not keep, and manifest-less steps
// (interrupted uploads) older than the newest committed one and than
// `committed_step`, the step whose commit it follows (a resumed job may be
// uploading below a newer committed step). A committed
// step's manifest is deleted first, so a half-deleted step is never taken
// for committed. Then aborts the uploads abandoned at or below the lower of
// the two (Note [Abandoned uploads]). Returns the step directory
// names it deleted. `stop` (when given) is read before each step's delete
// and before the aborts: once it is true, retention returns what it has
// deleted so far (ok), finishing no more than the step in flight; the next
// retention deletes the rest.
Result<std::vector<std::string>> apply_remote_retention(
    objstore::ObjectStore& store, const RetentionPolicy& policy, Deadline deadline,
    std::int64_t committed_step = std::numeric_limits<std::int64_t>::max(),
    const std::atomic<bool>* stop = nullptr);

// Aborts every pending upload (ObjectStore::list_pending_uploads) of a step
// at or below `newest_committed`. Returns how many it aborted.
Result<int> abort_abandoned_uploads(objstore::ObjectStore& store, std::int64_t newest_committed,
                                    Deadline deadline);

}  // namespace kiln::ckpt
