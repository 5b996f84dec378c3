// POSIX file helpers for checkpoints: every failure is a Status naming the
// operation and the path (errno_status maps ENOSPC to ResourceExhausted).
// Internal to kiln/ckpt.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kiln/base/status.h"

namespace kiln::ckpt::internal {

// An owned file descriptor opened for writing (create + truncate).
class WriteFile {
 public:
  static Result<WriteFile> create(const std::string& path);
  WriteFile(WriteFile&& o) noexcept : fd_(o.fd_), path_(std::move(o.path_)) { o.fd_ = -1; }
  WriteFile& operator=(WriteFile&&) = delete;
  ~WriteFile();

  Status append(const void* data, std::size_t n);  // retries short writes and EINTR
  Status sync();                                   // fsync
  // Asks the kernel to start writing back bytes [offset, offset + n) now
  // (sync_file_range, no wait), so the final fsync finds little left to do.
  void start_writeback(std::uint64_t offset, std::uint64_t n);
  Status close();  // reports the close error, if any
  const std::string& path() const { return path_; }

 private:
  WriteFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  int fd_;
  std::string path_;
};

// Reads `n` bytes at `offset`; DataLoss if the file ends first.
Status read_at(const std::string& path, std::uint64_t offset, void* out, std::size_t n);
Result<std::string> read_file(const std::string& path);
Result<std::uint64_t> file_size(const std::string& path);

Status make_dir(const std::string& path);  // ok if it exists already
Status sync_dir(const std::string& path);
Status rename_path(const std::string& from, const std::string& to);
Status remove_tree(const std::string& path);  // ok if it does not exist
bool path_exists(const std::string& path);
// Names in `dir` (not "." or ".."), sorted.
Result<std::vector<std::string>> list_dir(const std::string& dir);

}  // namespace kiln::ckpt::internal
