// MappedShards: shard mappings kept warm across epochs.
//
// Note [Warm shard mappings]: every epoch's Loader used to map each shard
// (mmap + MAP_POPULATE) and unmap it when no later batch needed it; for a
// warm 1 GiB epoch in 16 shards that was ~9 ms of the ~18 ms fixed cost per
// epoch on the 2-vCPU VM, the unmap on the consumer thread with a TLB
// shootdown of the other vCPU each time (docs/perf.md, issue 24). A released
// reader is parked here instead, and the next loader that acquires the same
// cache file takes it back without mapping again.
//
// A parked reader holds no ShardLease: a lease (the shard's flock, Note
// [Cache locking]) is what keeps a file from eviction, and a parked mapping
// must not block eviction for this or any other process. So the loader
// always acquires the lease first and only then takes the mapping, and
// take() hands a reader back only if the file at that path is still the one
// it maps (same FileIdentity: an evicted and downloaded-again shard is a new
// inode). A parked mapping of an evicted file keeps its inode's blocks
// allocated until it is dropped: this process's own evictions drop it at
// once (ShardCache::make_room calls forget()), another process's at the next
// take() of that path; the parked bytes are bounded (max_bytes, oldest
// dropped first), which bounds that overshoot of the cache's capacity.
#pragma once

#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "kiln/data/shard.h"

namespace kiln::data {

struct MappedShardsStats {
  std::atomic<std::uint64_t> reused{0};   // take() returned a parked reader
  std::atomic<std::uint64_t> missed{0};   // take() found none: the caller maps the file
  std::atomic<std::uint64_t> stale{0};    // dropped: the file at the path changed
  std::atomic<std::uint64_t> dropped{0};  // dropped: over max_bytes, or forget()
};

// Thread-safe.
class MappedShards {
 public:
  explicit MappedShards(std::uint64_t max_bytes) : max_bytes_(max_bytes) {}
  ~MappedShards();
  MappedShards(const MappedShards&) = delete;
  MappedShards& operator=(const MappedShards&) = delete;

  // The parked reader of `path` set to `verify` (ShardReader::set_policy),
  // if the file now at `path` is the one it maps; else null (a stale one is
  // dropped). Call with the shard's lease held. Counts reused or missed.
  std::unique_ptr<ShardReader> take(const std::string& path, VerifyPolicy verify);

  // Parks `reader` for a later take() (replacing one parked for the same
  // path); drops the oldest parked readers beyond max_bytes. No record() of
  // it may run after this.
  void put(std::unique_ptr<ShardReader> reader);

  // Drops the reader parked for `path`, if any (its file was evicted).
  void forget(const std::string& path);

  std::uint64_t parked_bytes() const;
  std::size_t parked() const;
  const MappedShardsStats& stats() const { return stats_; }

 private:
  std::uint64_t max_bytes_;
  mutable std::mutex mu_;
  using List = std::list<std::unique_ptr<ShardReader>>;
  // Removes the reader parked for `path` into `out`. Requires mu_.
  void unpark(const std::string& path, List* out);

  List parked_;                                              // GUARDED_BY(mu_), oldest first
  std::unordered_map<std::string, List::iterator> by_path_;  // GUARDED_BY(mu_)
  std::uint64_t bytes_ = 0;                                  // GUARDED_BY(mu_)
  MappedShardsStats stats_;
};

}  // namespace kiln::data
