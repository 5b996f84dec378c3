// WeightCache: the node-local tier between the object store holding a
// model's checkpoints and a replica's memory (docs/serve.md, "Weights").
//
//   object store (s3://, file://)  REMOTE/step-N/manifest.json + shard-*.bin
//        │ first replica on the node downloads, verifies every entry's checksum
//        ▼
//   <dir>/<xxh3 of the manifest>-step-N/    one directory per checkpoint step
//        │ later replicas: a hit, no download
//        ▼
//   memory (StepWeights: the files as stamped at download, Note [Verified
//          stamp] in step_weights.h, mapped; a replica's parameters view
//          the mapping, Note [Weights served where they lie] in torch_model.h)
//
// - Content-addressed: the name carries the xxh3 of the step's manifest, and
//   the manifest carries every entry's checksum, so a directory can never
//   pass for another checkpoint that reused the step number.
// - Note [Weight cache locking]: as the data shard cache (shard_cache.h):
//   "<name>.lock" held shared by a reader for as long as its WeightLease
//   lives, exclusive by the one process downloading (the others wait for it
//   instead of downloading again) and by eviction, which only tries (a
//   leased step is never evicted). flock works between processes and
//   between threads of one process alike.
// - A download goes to "<name>.partial.<pid>", is verified, and is renamed
//   into place: a crash leaves nothing that looks complete.
// - LRU by the directory's atime, touched on every acquire; eviction makes
//   room before a download, oldest first.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "kiln/base/deadline.h"
#include "kiln/base/fd.h"
#include "kiln/base/status.h"
#include "kiln/data/object_store.h"

namespace kiln::serve {

struct WeightCacheOptions {
  std::string dir;  // created if missing
  std::uint64_t capacity_bytes = 16ull << 30;
};

// Keeps one cached step from eviction while alive. Move-only.
struct WeightLease {
  std::string step_dir;  // a committed checkpoint step directory (ckpt::load_step reads it)
  std::int64_t step = -1;
  bool hit = false;          // false: this acquire downloaded it
  double fetch_seconds = 0;  // time to download and verify (0 on a hit)
  // Asking the remote for its newest step and that step's manifest: every
  // start pays it, a hit too.
  double lookup_seconds = 0;
  std::uint64_t bytes = 0;  // shard bytes
  Fd lock;                  // the shared lock
};

class WeightCache {
 public:
  // `remote` must outlive the cache. Thread-safe.
  WeightCache(data::ObjectStore* remote, WeightCacheOptions options);

  // The newest committed step of the remote (one with a manifest), from
  // the cache or downloaded into it. Blocks up to `deadline`. NotFound: no
  // committed step; DataLoss: a downloaded shard fails its checksum twice;
  // ResourceExhausted: no room (every cached step is leased, or the disk
  // is full); Unavailable / DeadlineExceeded from the remote.
  // `on_manifest`, when given, is called once on the calling thread with
  // the step and the text of its manifest as soon as the remote has named
  // them, before the step is downloaded or found in the cache (a replica
  // builds its model from it meanwhile).
  using ManifestCallback = std::function<void(std::int64_t step, const std::string& manifest)>;
  Result<WeightLease> acquire_latest(Deadline deadline, const ManifestCallback& on_manifest = {});

  // The manifest of the step most recently acquired from this cache (or
  // downloaded into it), read without a lock and without asking the remote:
  // a guess at what acquire_latest will name, made while it asks (Note [A
  // model built from the node cache's guess], replica.cc). nullopt when the
  // cache holds no committed step or the read fails (an eviction under way).
  std::optional<std::string> newest_cached_manifest() const;

  // Removes a cached step that failed to load (a corrupt file on the node),
  // so the next acquire downloads it again. Consumes the lease.
  Status discard(WeightLease lease, Deadline deadline);

  const std::string& dir() const { return options_.dir; }

 private:
  Status download(std::int64_t step, const std::string& manifest_text, const std::string& path,
                  Deadline deadline);
  Status make_room(std::uint64_t bytes, Deadline deadline);

  data::ObjectStore* remote_;
  WeightCacheOptions options_;
};

}  // namespace kiln::serve
