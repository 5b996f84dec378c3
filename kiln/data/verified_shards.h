// VerifiedShards: the shard files this process has already checksummed in
// full, by file identity, so that a later reader of the same immutable file
// may skip per-record hashing (VerifyPolicy::kOncePerFile in shard.h).
//
// Note [Verify once per file]: a committed cache file is never written in
// place (Note [Mapped shards stay valid] in shard.h): a download or repair is
// a new file renamed over the old, so a new inode. A file is therefore known
// by (st_dev, st_ino, size, mtime_ns): a replaced file has another inode, a
// truncated or extended one another size, one written in place (by anything
// but a bit flip on the medium) another mtime. The cache touches only atime
// for its LRU, so leasing a shard keeps its identity. What is not caught is a
// change that keeps all four: silent corruption of the medium or the page
// cache after the first check, or an in-place write within the same
// timestamp tick as the check on a filesystem without fine-grained
// timestamps. That is the trade-off VerifyPolicy::kEveryRead is for (LevelDB,
// for comparison, does not verify block checksums on reads unless
// ReadOptions::verify_checksums is set; we verify once per file per process).
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <deque>
#include <mutex>
#include <unordered_set>

namespace kiln::data {

struct FileIdentity {
  std::uint64_t dev = 0;
  std::uint64_t ino = 0;
  std::uint64_t size = 0;
  std::int64_t mtime_ns = 0;

  static FileIdentity of(const struct stat& st);
  bool operator==(const FileIdentity&) const = default;
};

// Thread-safe. Remembers at most `capacity` files, forgetting the oldest
// first (a forgotten file is simply verified again).
class VerifiedShards {
 public:
  explicit VerifiedShards(std::size_t capacity = 1 << 16) : capacity_(capacity) {}

  // The registry every ShardReader of this process consults.
  static VerifiedShards& process();

  bool contains(const FileIdentity& id) const;
  void add(const FileIdentity& id);
  void clear();

 private:
  struct Hash {
    std::size_t operator()(const FileIdentity& id) const;
  };
  const std::size_t capacity_;
  mutable std::mutex mu_;
  std::unordered_set<FileIdentity, Hash> files_;  // GUARDED_BY(mu_)
  std::deque<FileIdentity> order_;                // GUARDED_BY(mu_), oldest first
};

}  // namespace kiln::data
