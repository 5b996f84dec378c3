#include "kiln/data/convert/idx_file.h"

#include <zlib.h>

#include <cerrno>
#include <memory>

#include <fmt/format.h>

namespace kiln::data::convert {
namespace {

constexpr std::uint8_t kUnsignedByte = 0x08;
constexpr std::uint8_t kMaxRank = 4;

struct GzClose {
  void operator()(gzFile f) const { gzclose(f); }
};
using GzFile = std::unique_ptr<std::remove_pointer_t<gzFile>, GzClose>;

std::uint32_t big_endian(const std::uint8_t* b) {
  return (std::uint32_t{b[0]} << 24) | (std::uint32_t{b[1]} << 16) | (std::uint32_t{b[2]} << 8) | b[3];
}

// Reads exactly `n` bytes or reports how many were there.
Status read_exact(gzFile f, std::uint8_t* out, std::size_t n, const std::string& path,
                  std::string_view what) {
  std::size_t done = 0;
  while (done < n) {
    unsigned chunk = static_cast<unsigned>(std::min<std::size_t>(n - done, 1u << 30));
    int got = gzread(f, out + done, chunk);
    if (got < 0) {
      int err = 0;
      const char* msg = gzerror(f, &err);
      return data_loss(fmt::format("{}: reading {}: {}", path, what, msg ? msg : "zlib error"));
    }
    if (got == 0) {
      return data_loss(fmt::format("{}: truncated: {} needs {} bytes, the file ends after {}",
                                   path, what, n, done));
    }
    done += static_cast<std::size_t>(got);
  }
  return Status::ok();
}

}  // namespace

Result<IdxArray> read_idx(const std::string& path) {
  GzFile f(gzopen(path.c_str(), "rb"));
  if (!f) return errno_status("open IDX file " + path, errno ? errno : ENOENT);
  gzbuffer(f.get(), 1 << 20);
  std::uint8_t magic[4];
  KILN_RETURN_IF_ERROR(read_exact(f.get(), magic, 4, path, "the magic number"));
  if (magic[0] != 0 || magic[1] != 0) {
    return invalid_argument(fmt::format("{}: not an IDX file (magic {:02x}{:02x}{:02x}{:02x} does "
                                        "not start with 0000)", path, magic[0], magic[1], magic[2],
                                        magic[3]));
  }
  if (magic[2] != kUnsignedByte) {
    return invalid_argument(fmt::format("{}: element type 0x{:02x} is not unsigned byte (0x08)",
                                        path, magic[2]));
  }
  if (magic[3] == 0 || magic[3] > kMaxRank) {
    return invalid_argument(fmt::format("{}: rank {} is outside 1..{}", path, magic[3], kMaxRank));
  }
  IdxArray out;
  std::uint64_t elements = 1;
  for (int d = 0; d < magic[3]; ++d) {
    std::uint8_t b[4];
    KILN_RETURN_IF_ERROR(read_exact(f.get(), b, 4, path, fmt::format("dimension {}", d)));
    out.dims.push_back(big_endian(b));
    elements *= out.dims.back();
  }
  if (elements > (std::uint64_t{1} << 34)) {
    return invalid_argument(fmt::format("{}: dimensions multiply to {} elements; refusing", path,
                                        elements));
  }
  out.data.resize(elements);
  KILN_RETURN_IF_ERROR(read_exact(f.get(), out.data.data(), out.data.size(), path, "the elements"));
  return out;
}

}  // namespace kiln::data::convert
