// Fs: the file operations the checkpoint write path makes, behind an
// interface so tests can inject faults (LevelDB's Env; see
// testing/fault_fs.h). Only writes and directory changes go through it:
// readers detect damage by checksum anyway.
//
// Every call may block on disk I/O; every failure is a Status naming the
// operation and path (ENOSPC/EDQUOT → ResourceExhausted). Implementations are
// thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "kiln/base/status.h"

namespace kiln::ckpt {

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
Status write_file_synced(Fs& fs, const std::string& path, const std::string& contents);
// Replaces `path` durably and atomically: `path`.tmp, fsync, rename, fsync
// of the directory (LevelDB's SetCurrentFile).
Status write_file_atomic(Fs& fs, const std::string& path, const std::string& contents);

}  // namespace kiln::ckpt
