#include "kiln/base/file.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <system_error>

#include "kiln/base/fd.h"

namespace kiln {

Status read_at(const std::string& path, std::uint64_t offset, void* out, std::size_t n) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return errno_status(fmt::format("open {}", path), errno);
  char* p = static_cast<char*>(out);
  for (std::size_t done = 0; done < n;) {
    ssize_t r = ::pread(fd.get(), p + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return errno_status(fmt::format("read {} at offset {}", path, offset + done), errno);
    if (r == 0) {
      return data_loss(
          fmt::format("{} ends at offset {}, expected {} bytes at offset {} (truncated?)", path,
                      offset + done, n, offset));
    }
    done += static_cast<std::size_t>(r);
  }
  return Status::ok();
}

Result<std::uint64_t> file_size(const std::string& path) {
  struct stat sb {};
  if (::stat(path.c_str(), &sb) != 0) return errno_status(fmt::format("stat {}", path), errno);
  return static_cast<std::uint64_t>(sb.st_size);
}

Result<std::string> read_file(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return errno_status(fmt::format("open {}", path), errno);
  std::string out;
  char buf[65536];
  while (true) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno_status(fmt::format("read {}", path), errno);
    if (n == 0) return out;
    out.append(buf, static_cast<std::size_t>(n));
  }
}

bool path_exists(const std::string& path) {
  struct stat sb {};
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

Status write_all(int fd, std::string_view bytes, std::string_view what) {
  const char* p = bytes.data();
  std::size_t left = bytes.size();
  while (left > 0) {
    ssize_t w = ::write(fd, p, left);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return errno_status(fmt::format("write {} bytes to {}", left, what), errno);
    p += w;
    left -= static_cast<std::size_t>(w);
  }
  return Status::ok();
}

Status make_dirs(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return errno_status(fmt::format("create directory {}", dir), ec.value());
  return Status::ok();
}

}  // namespace kiln
