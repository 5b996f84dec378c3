#include "kiln/ckpt/internal/file.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <system_error>

namespace kiln::ckpt::internal {

Result<WriteFile> WriteFile::create(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return errno_status(fmt::format("create checkpoint file {}", path), errno);
  return WriteFile(fd, path);
}

WriteFile::~WriteFile() {
  if (fd_ >= 0) ::close(fd_);
}

Status WriteFile::append(const void* data, std::size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd_, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno_status(fmt::format("write {} bytes to {}", n, path_), errno);
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return Status::ok();
}

Status WriteFile::sync() {
  if (::fsync(fd_) != 0) return errno_status(fmt::format("fsync {}", path_), errno);
  return Status::ok();
}

void WriteFile::start_writeback(std::uint64_t offset, std::uint64_t n) {
  // Advisory: an error here resurfaces at fsync, which is checked.
  (void)::sync_file_range(fd_, static_cast<off64_t>(offset), static_cast<off64_t>(n),
                          SYNC_FILE_RANGE_WRITE);
}

Status WriteFile::close() {
  int fd = fd_;
  fd_ = -1;
  if (fd >= 0 && ::close(fd) != 0) return errno_status(fmt::format("close {}", path_), errno);
  return Status::ok();
}

Status read_at(const std::string& path, std::uint64_t offset, void* out, std::size_t n) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_status(fmt::format("open {}", path), errno);
  char* p = static_cast<char*>(out);
  std::size_t done = 0;
  Status st;
  while (done < n) {
    ssize_t r = ::pread(fd, p + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      st = errno_status(fmt::format("read {} at offset {}", path, offset + done), errno);
      break;
    }
    if (r == 0) {
      st =
          data_loss(fmt::format("{} ends at offset {}, expected {} bytes at offset {} (truncated?)",
                                path, offset + done, n, offset));
      break;
    }
    done += static_cast<std::size_t>(r);
  }
  ::close(fd);
  return st;
}

Result<std::uint64_t> file_size(const std::string& path) {
  struct stat sb;
  if (::stat(path.c_str(), &sb) != 0) return errno_status(fmt::format("stat {}", path), errno);
  return static_cast<std::uint64_t>(sb.st_size);
}

Result<std::string> read_file(const std::string& path) {
  KILN_ASSIGN_OR_RETURN(auto size, file_size(path));
  std::string s(size, '\0');
  KILN_RETURN_IF_ERROR(read_at(path, 0, s.data(), s.size()));
  return s;
}

Status make_dir(const std::string& path) {
  if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) {
    return errno_status(fmt::format("mkdir {}", path), errno);
  }
  return Status::ok();
}

Status sync_dir(const std::string& path) {
  std::string p = path.empty() ? "." : path;
  int fd = ::open(p.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno_status(fmt::format("open directory {}", p), errno);
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) return errno_status(fmt::format("fsync directory {}", p), err);
  return Status::ok();
}

Status rename_path(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    return errno_status(fmt::format("rename {} to {}", from, to), errno);
  }
  return Status::ok();
}

Status remove_tree(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
  if (ec) return errno_status(fmt::format("remove {}", path), ec.value());
  return Status::ok();
}

bool path_exists(const std::string& path) {
  struct stat sb;
  return ::stat(path.c_str(), &sb) == 0;
}

Result<std::vector<std::string>> list_dir(const std::string& dir) {
  std::error_code ec;
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    names.push_back(e.path().filename().string());
  }
  if (ec) return errno_status(fmt::format("list directory {}", dir), ec.value());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace kiln::ckpt::internal
