// ShardCache: the local tier. Shards of a remote dataset are downloaded into a
// capacity-bounded directory shared by every process on the host.
//
// - Files are content-addressed: "<xxh3>-<shard file>", so two datasets never
//   collide and a stale file can never pass for another shard.
// - A download goes to a temp name, is verified against index.json's size and
//   xxh3 (a mismatch is fetched once more, then DataLoss naming the shard and
//   both checksums) and is committed by rename.
// - Note [Cache locking]: each shard has "<name>.lock". A reader holds it
//   shared (flock LOCK_SH) for as long as its ShardLease lives; the fetcher
//   holds it exclusive while downloading, so every other process (or thread)
//   waits for that one download instead of fetching again. Eviction takes it
//   exclusive without blocking, so a shard any reader holds is never evicted.
//   flock is per open file, so this works between threads of one process too.
// - LRU by atime (touched on every acquire; the mtime is left alone, it is
//   part of the file's identity, Note [Verify once per file]), shared across
//   processes. A verified download goes into VerifiedShards::process().
//   Concurrent downloads may overshoot the capacity by the shards in flight.
// - Readers released by loaders stay mapped in mappings(), without a lease,
//   for the next epoch (Note [Warm shard mappings] in mapped_shards.h).
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "kiln/base/deadline.h"
#include "kiln/base/fd.h"
#include "kiln/base/status.h"
#include "kiln/data/index.h"
#include "kiln/data/mapped_shards.h"
#include "kiln/objstore/object_store.h"

namespace kiln::data {

struct ShardCacheOptions {
  std::string dir;  // created if missing
  std::uint64_t capacity_bytes = 8ull << 30;
  // Bound on the shard mappings kept across epochs (mappings()); at most
  // capacity_bytes. 0: none kept.
  std::uint64_t keep_mapped_bytes = 4ull << 30;
};

// Keeps a shard in the cache while alive (holds its lock shared). Move-only.
class ShardLease {
 public:
  ShardLease() = default;
  ShardLease(std::string path, Fd lock) : path_(std::move(path)), lock_(std::move(lock)) {}
  ShardLease(ShardLease&&) noexcept = default;
  ShardLease& operator=(ShardLease&&) noexcept = default;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  Fd lock_;  // closing it releases the shared lock
};

struct ShardCacheStats {
  std::atomic<std::uint64_t> hits{0};
  std::atomic<std::uint64_t> downloads{0};
  std::atomic<std::uint64_t> bytes_downloaded{0};
  std::atomic<std::uint64_t> evictions{0};
};

class ShardCache {
 public:
  // `remote` must outlive the cache; `prefix` is the dataset's key prefix in
  // it ("" or "train"). Thread-safe.
  ShardCache(objstore::ObjectStore* remote, std::string prefix, ShardCacheOptions options);

  // Returns the local path of `shard`, downloading it first if needed. Blocks
  // up to `deadline` (waiting for another process's download, or evicting).
  // DataLoss: checksum mismatch twice. ResourceExhausted: the capacity cannot
  // fit the shard because every cached shard is leased, or the disk is full.
  // NotFound / Unavailable / DeadlineExceeded from the remote.
  Result<ShardLease> acquire(const ShardInfo& shard, Deadline deadline);

  // Bytes of committed shards in the directory now.
  Result<std::uint64_t> used_bytes() const;

  const ShardCacheStats& stats() const { return stats_; }
  const std::string& dir() const { return options_.dir; }

  // Shard readers kept mapped across epochs (Note [Warm shard mappings]).
  MappedShards& mappings() { return mapped_; }
  const MappedShards& mappings() const { return mapped_; }

 private:
  Status fetch(const ShardInfo& shard, const std::string& path, Deadline deadline);
  Status make_room(const ShardInfo& shard, Deadline deadline);

  objstore::ObjectStore* remote_;
  std::string prefix_;
  ShardCacheOptions options_;
  ShardCacheStats stats_;
  MappedShards mapped_;
};

}  // namespace kiln::data
