#include "kiln/data/shard_cache.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "kiln/base/backoff.h"
#include "kiln/base/logging.h"
#include "kiln/data/checksum.h"
#include "kiln/base/fd.h"
#include "kiln/base/file.h"
#include "kiln/base/fs.h"
#include "kiln/data/verified_shards.h"

namespace kiln::data {
namespace fs = std::filesystem;
namespace {

constexpr char kShardSuffix[] = ".kds";

// flock(2) has no timeout: poll the non-blocking form until the deadline.
Status lock_until(int fd, int op, Deadline deadline, const std::string& what) {
  Backoff backoff({.base = std::chrono::milliseconds(1), .cap = std::chrono::milliseconds(50)});
  while (true) {
    if (::flock(fd, op | LOCK_NB) == 0) return Status::ok();
    if (errno != EWOULDBLOCK && errno != EINTR) return errno_status("flock " + what, errno);
    if (!backoff.sleep_before_retry(deadline)) {
      return deadline_exceeded(fmt::format("lock {}: deadline passed while another process held it "
                                           "(a slow download?)", what));
    }
  }
}

bool is_shard_file(const std::string& name) {
  return name.size() > 4 && name.compare(name.size() - 4, 4, kShardSuffix) == 0 &&
         !is_temp_name(name);
}

}  // namespace

ShardCache::ShardCache(objstore::ObjectStore* remote, std::string prefix, ShardCacheOptions options)
    : remote_(remote),
      prefix_(std::move(prefix)),
      options_(std::move(options)),
      mapped_(std::min(options_.keep_mapped_bytes, options_.capacity_bytes)) {}

Result<ShardLease> ShardCache::acquire(const ShardInfo& shard, Deadline deadline) {
  KILN_RETURN_IF_ERROR(make_dirs(options_.dir));
  std::string name = checksum_hex(shard.xxh3) + "-" + shard.file;
  std::string path = options_.dir + "/" + name;
  std::string lock_path = path + ".lock";
  Fd lock(::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (lock.get() < 0) return errno_status("open cache lock " + lock_path, errno);
  bool fetched = false;
  Backoff contended({.base = std::chrono::milliseconds(1), .cap = std::chrono::milliseconds(50)});
  while (true) {
    KILN_RETURN_IF_ERROR(lock_until(lock.get(), LOCK_SH, deadline, lock_path));
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && static_cast<std::uint64_t>(st.st_size) == shard.bytes) {
      // LRU: most recently used now. atime only: the mtime is part of the
      // file's identity (Note [Verify once per file] in verified_shards.h).
      const struct timespec times[2] = {{0, UTIME_NOW}, {0, UTIME_OMIT}};
      ::utimensat(AT_FDCWD, path.c_str(), times, 0);
      if (!fetched) stats_.hits.fetch_add(1);
      return ShardLease(path, std::move(lock));
    }
    ::flock(lock.get(), LOCK_UN);
    // Never wait for the exclusive lock while the shard may have appeared:
    // another thread can commit it and a reader lease it between our check
    // and this call, and that lease would then block us forever. Try once;
    // on contention, back off and look again under the shared lock.
    if (::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) {
      if (errno != EWOULDBLOCK && errno != EINTR) return errno_status("flock " + lock_path, errno);
      if (!contended.sleep_before_retry(deadline)) {
        return deadline_exceeded(fmt::format("cache {}: shard {} still being fetched by another "
                                             "process at the deadline", options_.dir, shard.file));
      }
      continue;
    }
    Status s;
    if (::stat(path.c_str(), &st) != 0 || static_cast<std::uint64_t>(st.st_size) != shard.bytes) {
      ::unlink(path.c_str());  // a wrong-sized file is not this shard
      s = fetch(shard, path, deadline);
      fetched = true;
    }
    ::flock(lock.get(), LOCK_UN);
    KILN_RETURN_IF_ERROR(s);
  }
}

Status ShardCache::fetch(const ShardInfo& shard, const std::string& path, Deadline deadline) {
  std::string key = prefix_.empty() ? shard.file : prefix_ + "/" + shard.file;
  std::string tmp = temp_path_for(path);
  Backoff backoff({.base = std::chrono::milliseconds(50), .cap = std::chrono::seconds(2)});
  int mismatches = 0;
  while (true) {
    KILN_RETURN_IF_ERROR(make_room(shard, deadline));
    Status s = remote_->get_to_file(key, tmp, deadline);
    if (s.is_ok()) {
      auto digest = hash_file(tmp);
      if (!digest) {
        s = digest.status();
      } else if (digest->bytes != shard.bytes || digest->xxh3 != shard.xxh3) {
        ::unlink(tmp.c_str());
        if (++mismatches >= 2) {
          return data_loss(fmt::format(
              "shard {} from {}: downloaded twice and both copies mismatch index.json "
              "(expected {} bytes xxh3 {}, got {} bytes xxh3 {}); the remote copy is corrupt",
              shard.file, remote_->describe(), shard.bytes, checksum_hex(shard.xxh3),
              digest->bytes, checksum_hex(digest->xxh3)));
        }
        log()->warn("cache: shard {} failed its checksum (got {}, expected {}); fetching again",
                    shard.file, checksum_hex(digest->xxh3), checksum_hex(shard.xxh3));
        continue;
      } else if (struct stat st {}; ::stat(tmp.c_str(), &st) != 0) {
        s = errno_status("stat " + tmp, errno);
      } else if (s = Fs::posix()->rename(tmp, path); s.is_ok()) {
        // The whole file just matched index.json's xxh3, so every record in
        // it is the writer's: readers with VerifyPolicy::kOncePerFile need
        // not hash it again (the rename keeps inode, size and mtime).
        VerifiedShards::process().add(FileIdentity::of(st));
        stats_.downloads.fetch_add(1);
        stats_.bytes_downloaded.fetch_add(shard.bytes);
        return Fs::posix()->sync_dir(options_.dir);
      }
    }
    ::unlink(tmp.c_str());
    if (s.code() == Code::kResourceExhausted) {
      return resource_exhausted(fmt::format(
          "cache {}: disk full while fetching shard {} ({} bytes): lower the cache capacity "
          "({} bytes) below the free space or free the disk ({})",
          options_.dir, shard.file, shard.bytes, options_.capacity_bytes, s.message()));
    }
    if (s.code() != Code::kUnavailable || !backoff.sleep_before_retry(deadline)) {
      return s.with_context(fmt::format("cache {}: fetch shard {}", options_.dir, shard.file));
    }
  }
}

Result<std::uint64_t> ShardCache::used_bytes() const {
  std::error_code ec;
  std::uint64_t total = 0;
  for (const auto& e : fs::directory_iterator(options_.dir, ec)) {
    if (is_shard_file(e.path().filename().string())) total += e.file_size(ec);
  }
  if (ec) return errno_status("list cache " + options_.dir, ec.value());
  return total;
}

Status ShardCache::make_room(const ShardInfo& shard, Deadline deadline) {
  if (shard.bytes > options_.capacity_bytes) {
    return resource_exhausted(fmt::format("cache {}: shard {} ({} bytes) exceeds the capacity ({} "
                                          "bytes)", options_.dir, shard.file, shard.bytes,
                                          options_.capacity_bytes));
  }
  // One evictor at a time per directory, so two cannot both count the same free space.
  std::string glock = options_.dir + "/.evict.lock";
  Fd g(::open(glock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (g.get() < 0) return errno_status("open " + glock, errno);
  KILN_RETURN_IF_ERROR(lock_until(g.get(), LOCK_EX, deadline, glock));

  struct Entry {
    std::string path;
    std::uint64_t bytes;
    std::int64_t atime_ns;  // last acquire (or read)
  };
  std::vector<Entry> entries;
  std::uint64_t used = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(options_.dir, ec)) {
    std::string p = e.path().string();
    if (!is_shard_file(e.path().filename().string())) continue;
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) continue;
    auto bytes = static_cast<std::uint64_t>(st.st_size);
    entries.push_back({p, bytes, st.st_atim.tv_sec * 1000000000ll + st.st_atim.tv_nsec});
    used += bytes;
  }
  if (ec) return errno_status("list cache " + options_.dir, ec.value());
  if (used + shard.bytes <= options_.capacity_bytes) return Status::ok();
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.atime_ns < b.atime_ns; });
  std::uint64_t leased = 0;
  for (const auto& e : entries) {
    if (used + shard.bytes <= options_.capacity_bytes) break;
    std::string lp = e.path + ".lock";
    Fd l(::open(lp.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
    if (l.get() < 0 || ::flock(l.get(), LOCK_EX | LOCK_NB) != 0) {
      leased += e.bytes;  // a reader holds it (or we cannot tell): keep it
      continue;
    }
    if (::unlink(e.path.c_str()) == 0) {
      mapped_.forget(e.path);  // its blocks are freed only once unmapped
      used -= e.bytes;
      stats_.evictions.fetch_add(1);
    }
  }
  if (used + shard.bytes > options_.capacity_bytes) {
    return resource_exhausted(fmt::format(
        "cache {}: no room for shard {} ({} bytes): capacity {} bytes, {} bytes held by readers; "
        "raise the capacity or read fewer shards at once", options_.dir, shard.file, shard.bytes,
        options_.capacity_bytes, leased));
  }
  return Status::ok();
}

}  // namespace kiln::data
