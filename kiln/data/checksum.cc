#include "kiln/data/checksum.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include <fmt/format.h>

#include "kiln/base/fd.h"

namespace kiln::data {

std::string checksum_hex(std::uint64_t h) { return fmt::format("{:016x}", h); }

Result<std::uint64_t> parse_checksum_hex(std::string_view hex) {
  if (hex.size() != 16) return invalid_argument(fmt::format("checksum '{}' is not 16 hex digits", hex));
  std::uint64_t v = 0;
  for (char ch : hex) {
    int d = (ch >= '0' && ch <= '9') ? ch - '0' : (ch >= 'a' && ch <= 'f') ? ch - 'a' + 10 : -1;
    if (d < 0) return invalid_argument(fmt::format("checksum '{}' is not 16 hex digits", hex));
    v = (v << 4) | static_cast<std::uint64_t>(d);
  }
  return v;
}

Result<FileDigest> hash_file(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return errno_status("open " + path, errno);
  Xxh3 hash;
  std::vector<std::uint8_t> buf(1 << 20);
  FileDigest d;
  Status status;
  while (true) {
    ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      status = errno_status("read " + path, errno);
      break;
    }
    if (n == 0) break;
    hash.update(buf.data(), static_cast<std::size_t>(n));
    d.bytes += static_cast<std::uint64_t>(n);
  }
  d.xxh3 = hash.digest();
  if (!status.is_ok()) return status;
  return d;
}

}  // namespace kiln::data
