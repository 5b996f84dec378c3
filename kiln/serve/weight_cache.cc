#include "kiln/serve/weight_cache.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <vector>

#include "kiln/base/backoff.h"
#include "kiln/base/file.h"
#include "kiln/base/logging.h"
#include "kiln/ckpt/format.h"
#include "kiln/ckpt/remote.h"
#include "kiln/ckpt/remote_load.h"
#include "kiln/ckpt/verify.h"
#include "kiln/serve/step_weights.h"

namespace kiln::serve {
namespace fs = std::filesystem;
namespace {

// flock(2) has no timeout: poll the non-blocking form until the deadline.
Status lock_until(int fd, int op, Deadline deadline, const std::string& what) {
  Backoff backoff({.base = std::chrono::milliseconds(1), .cap = std::chrono::milliseconds(50)});
  while (true) {
    if (::flock(fd, op | LOCK_NB) == 0) return Status::ok();
    if (errno != EWOULDBLOCK && errno != EINTR) return errno_status("flock " + what, errno);
    if (!backoff.sleep_before_retry(deadline)) {
      return deadline_exceeded(fmt::format(
          "lock {}: the deadline passed while another process held it (a slow download?)", what));
    }
  }
}

Result<Fd> open_lock(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!fd.valid()) return errno_status("open weight cache lock " + path, errno);
  return fd;
}

bool is_committed(const std::string& step_dir) {
  struct stat st {};
  return ::stat((step_dir + "/" + ckpt::kManifestName).c_str(), &st) == 0;
}

// Cached step directories: "<16 hex>-step-N" (not .lock, not .partial.*).
bool is_entry_name(const std::string& name) {
  return name.size() > 17 && name[16] == '-' && name.find('.') == std::string::npos;
}

std::uint64_t tree_bytes(const std::string& dir) {
  std::uint64_t total = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.is_regular_file(ec)) total += e.file_size(ec);
  }
  return total;
}

Status write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return errno_status("write " + path, errno);
  return Status::ok();
}

Status fsync_dir(const std::string& dir) {
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid() || ::fsync(fd.get()) != 0) return errno_status("fsync directory " + dir, errno);
  return Status::ok();
}

}  // namespace

WeightCache::WeightCache(data::ObjectStore* remote, WeightCacheOptions options)
    : remote_(remote), options_(std::move(options)) {}

Result<WeightLease> WeightCache::acquire_latest(Deadline deadline,
                                                const ManifestCallback& on_manifest) {
  std::error_code ec;
  fs::create_directories(options_.dir, ec);
  if (ec) return errno_status("create weight cache " + options_.dir, ec.value());
  const auto lookup_start = Clock::now();
  KILN_ASSIGN_OR_RETURN(auto steps, ckpt::list_remote_committed_steps(*remote_, deadline));
  if (steps.empty()) {
    return not_found(fmt::format("no committed checkpoint step (step-N/manifest.json) on {}",
                                 remote_->describe()));
  }
  const std::int64_t step = steps.front();
  KILN_ASSIGN_OR_RETURN(std::string manifest_text,
                        remote_->get(ckpt::remote_key(step, ckpt::kManifestName), deadline));
  if (on_manifest) on_manifest(step, manifest_text);
  const std::string name =
      ckpt::checksum_hex(ckpt::checksum(manifest_text.data(), manifest_text.size())) + "-" +
      ckpt::step_dir_name(step);
  const std::string path = options_.dir + "/" + name;
  const std::string lock_path = path + ".lock";
  const double lookup_seconds = std::chrono::duration<double>(Clock::now() - lookup_start).count();
  KILN_ASSIGN_OR_RETURN(Fd lock, open_lock(lock_path));
  bool fetched = false;
  double fetch_seconds = 0;
  Backoff contended({.base = std::chrono::milliseconds(1), .cap = std::chrono::milliseconds(50)});
  while (true) {
    KILN_RETURN_IF_ERROR(lock_until(lock.get(), LOCK_SH, deadline, lock_path));
    if (is_committed(path)) {
      // LRU: most recently used now.
      const struct timespec times[2] = {{0, UTIME_NOW}, {0, UTIME_OMIT}};
      ::utimensat(AT_FDCWD, path.c_str(), times, 0);
      WeightLease lease;
      lease.step_dir = path;
      lease.step = step;
      lease.hit = !fetched;
      lease.fetch_seconds = fetch_seconds;
      lease.lookup_seconds = lookup_seconds;
      lease.bytes = tree_bytes(path);
      lease.lock = std::move(lock);
      return lease;
    }
    ::flock(lock.get(), LOCK_UN);
    // Never block on the exclusive lock: another process may commit the
    // step and lease it between our look and this call, and we would wait
    // for its lease to end. Try once; on contention look again.
    if (::flock(lock.get(), LOCK_EX | LOCK_NB) != 0) {
      if (errno != EWOULDBLOCK && errno != EINTR) return errno_status("flock " + lock_path, errno);
      if (!contended.sleep_before_retry(deadline)) {
        return deadline_exceeded(fmt::format(
            "weight cache {}: {} still being downloaded by another process at the deadline",
            options_.dir, name));
      }
      continue;
    }
    Status s;
    if (!is_committed(path)) {
      const auto start = Clock::now();
      s = download(step, manifest_text, path, deadline);
      fetch_seconds = std::chrono::duration<double>(Clock::now() - start).count();
      fetched = true;
    }
    ::flock(lock.get(), LOCK_UN);
    KILN_RETURN_IF_ERROR(s);
  }
}

Status WeightCache::download(std::int64_t step, const std::string& manifest_text,
                             const std::string& path, Deadline deadline) {
  const std::string where = remote_->describe() + "/" + ckpt::step_dir_name(step);
  KILN_ASSIGN_OR_RETURN(ckpt::Manifest m, ckpt::parse_manifest(manifest_text, where));
  std::uint64_t bytes = manifest_text.size();
  for (const auto& shard : m.shards) bytes += shard.bytes;
  KILN_RETURN_IF_ERROR(make_room(bytes, deadline));
  const std::string partial = fmt::format("{}.partial.{}", path, ::getpid());
  Backoff backoff({.base = std::chrono::milliseconds(50), .cap = std::chrono::seconds(2)});
  for (int attempt = 1;; ++attempt) {
    std::error_code ec;
    fs::remove_all(partial, ec);
    fs::remove_all(path, ec);  // a directory without a manifest: a crashed rename's leftovers
    if (!fs::create_directories(partial, ec)) {
      return errno_status("create " + partial, ec ? ec.value() : EEXIST);
    }
    Status s = write_file(partial + "/" + ckpt::kManifestName, manifest_text);
    for (const auto& shard : m.shards) {
      if (!s.is_ok()) break;
      s = ckpt::fetch_remote_shard(*remote_, step, shard, partial + "/" + shard.file, deadline);
    }
    // Every entry's checksum, so what the cache holds is what was trained.
    if (s.is_ok()) s = ckpt::verify_step_status(partial);
    // Note [Verified stamp]: what a hit checks instead of every checksum.
    if (s.is_ok()) s = write_verified_stamp(partial);
    if (s.is_ok()) {
      if (::rename(partial.c_str(), path.c_str()) != 0) {
        s = errno_status("rename " + partial + " to " + path, errno);
      } else {
        log()->info("weight cache: downloaded {} ({} bytes) into {}", where, bytes, path);
        return fsync_dir(options_.dir);
      }
    }
    fs::remove_all(partial, ec);
    const bool retry = (s.code() == Code::kDataLoss && attempt == 1) ||
                       (s.code() == Code::kUnavailable && backoff.sleep_before_retry(deadline));
    if (!retry) {
      if (s.code() == Code::kDataLoss) {
        return data_loss(
            fmt::format("weight cache {}: {} downloaded twice and failed its checksums "
                        "both times; the remote copy is corrupt: {}",
                        options_.dir, where, s.message()));
      }
      return s.with_context(fmt::format("weight cache {}: download {}", options_.dir, where));
    }
    log()->warn("weight cache: download of {} failed ({}); trying again", where, s.to_string());
  }
}

Status WeightCache::make_room(std::uint64_t bytes, Deadline deadline) {
  if (bytes > options_.capacity_bytes) {
    return resource_exhausted(
        fmt::format("weight cache {}: a checkpoint of {} bytes exceeds the "
                    "capacity ({} bytes)",
                    options_.dir, bytes, options_.capacity_bytes));
  }
  // One evictor at a time, so two cannot count the same free space.
  KILN_ASSIGN_OR_RETURN(Fd global, open_lock(options_.dir + "/.evict.lock"));
  KILN_RETURN_IF_ERROR(lock_until(global.get(), LOCK_EX, deadline, options_.dir + "/.evict.lock"));
  struct Entry {
    std::string path;
    std::uint64_t bytes;
    std::int64_t atime_ns;
  };
  std::vector<Entry> entries;
  std::uint64_t used = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(options_.dir, ec)) {
    if (!is_entry_name(e.path().filename().string())) continue;
    struct stat st {};
    const std::string p = e.path().string();
    if (::stat(p.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) continue;
    const std::uint64_t b = tree_bytes(p);
    entries.push_back({p, b, st.st_atim.tv_sec * 1000000000ll + st.st_atim.tv_nsec});
    used += b;
  }
  if (ec) return errno_status("list weight cache " + options_.dir, ec.value());
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.atime_ns < b.atime_ns; });
  std::uint64_t leased = 0;
  for (const auto& e : entries) {
    if (used + bytes <= options_.capacity_bytes) break;
    auto l = open_lock(e.path + ".lock");
    if (!l.is_ok() || ::flock(l->get(), LOCK_EX | LOCK_NB) != 0) {
      leased += e.bytes;  // a replica is loading or serving from it: keep it
      continue;
    }
    fs::remove_all(e.path, ec);
    if (!ec) {
      used -= e.bytes;
      log()->info("weight cache: evicted {} ({} bytes, least recently used)", e.path, e.bytes);
    }
  }
  if (used + bytes > options_.capacity_bytes) {
    return resource_exhausted(fmt::format(
        "weight cache {}: no room for {} bytes: capacity {} bytes, {} bytes leased by running "
        "replicas; raise the capacity",
        options_.dir, bytes, options_.capacity_bytes, leased));
  }
  return Status::ok();
}

std::optional<std::string> WeightCache::newest_cached_manifest() const {
  std::string newest;
  std::int64_t newest_atime_ns = -1;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(options_.dir, ec)) {
    const std::string name = e.path().filename().string();
    if (!is_entry_name(name)) continue;
    struct stat st {};
    const std::string p = e.path().string();
    if (::stat(p.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) continue;
    const std::int64_t atime_ns = st.st_atim.tv_sec * 1000000000ll + st.st_atim.tv_nsec;
    if (atime_ns > newest_atime_ns && is_committed(p)) {
      newest = p;
      newest_atime_ns = atime_ns;
    }
  }
  if (newest.empty()) return std::nullopt;
  auto text = read_file(newest + "/" + ckpt::kManifestName);
  if (!text.is_ok()) return std::nullopt;
  return std::move(text).value();
}

Status WeightCache::discard(WeightLease lease, Deadline deadline) {
  const std::string lock_path = lease.step_dir + ".lock";
  ::flock(lease.lock.get(), LOCK_UN);
  KILN_RETURN_IF_ERROR(lock_until(lease.lock.get(), LOCK_EX, deadline, lock_path));
  std::error_code ec;
  fs::remove_all(lease.step_dir, ec);
  if (ec) return errno_status("remove corrupt cached weights " + lease.step_dir, ec.value());
  log()->warn("weight cache: removed {} (it failed to load); the next start downloads it again",
              lease.step_dir);
  return Status::ok();
}

}  // namespace kiln::serve
