// Fs: the file operations of Kiln's durable write paths (checkpoints, the
// shard cache, the file:// object store, the file store, reports) behind one
// interface, so tests can inject faults (LevelDB's Env and
// fault_injection_test; testing/fault_fs.h). Only writes and directory
// changes go through it: readers detect damage by checksum anyway.
//
// Every call may block on disk I/O; every failure is a Status naming the
// operation and path (ENOSPC/EDQUOT → ResourceExhausted). Implementations are
// thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "kiln/base/status.h"

namespace kiln {

// A file being written, from its start, by one thread.
class FsWriter {
 public:
  virtual ~FsWriter() = default;
  virtual Status append(const void* data, std::size_t n) = 0;
  // Starts writeback of [offset, offset + n) without waiting (advisory).
  virtual void start_writeback(std::uint64_t offset, std::uint64_t n) = 0;
  virtual Status sync() = 0;
  virtual Status close() = 0;
};

class Fs {
 public:
  virtual ~Fs() = default;
  // Creates or truncates `path` for writing.
  virtual Result<std::unique_ptr<FsWriter>> create(const std::string& path) = 0;
  virtual Status make_dir(const std::string& path) = 0;  // ok if it exists
  virtual Status sync_dir(const std::string& path) = 0;
  virtual Status rename(const std::string& from, const std::string& to) = 0;
  virtual Status remove_tree(const std::string& path) = 0;  // ok if absent

  // The real filesystem (process-wide, never destroyed).
  static Fs* posix();
};

// Writes `contents` to a new file and fsyncs it.
Status write_file_synced(Fs& fs, const std::string& path, std::string_view contents);

// Note [Atomic replace]: a reader of `path` sees the old file or the new one,
// never a part. The bytes go to a temp name beside `path` (temp_path_for),
// are fsynced, renamed over `path`, and the directory is fsynced, so after a
// crash `path` is the old or the new file and, once this returns, the new one
// survives power loss (LevelDB's SetCurrentFile). kAtomicOnly skips both
// fsyncs, for files a crash may lose but never tear (rendezvous keys,
// reports). On failure the temp file is removed and `path` is untouched.
enum class Durability { kDurable, kAtomicOnly };

// `fill` writes the contents through the writer it is given (and must not
// close it).
Status write_file_atomic(Fs& fs, const std::string& path,
                         const std::function<Status(FsWriter&)>& fill,
                         Durability durability = Durability::kDurable);
Status write_file_atomic(Fs& fs, const std::string& path, std::string_view contents,
                         Durability durability = Durability::kDurable);
// The same on the real filesystem.
Status write_file_atomic(const std::string& path, std::string_view contents,
                         Durability durability = Durability::kDurable);

// "<path>.tmp.<host>.<pid>.<n>": unique per host, process and call, so
// concurrent writers of the same path (threads, or processes on several hosts
// over a shared filesystem) never share a temp file. Listings skip names for which is_temp_name is
// true.
std::string temp_path_for(const std::string& path);
bool is_temp_name(std::string_view name);

}  // namespace kiln
