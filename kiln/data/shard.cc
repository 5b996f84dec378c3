#include "kiln/data/shard.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "kiln/data/checksum.h"

namespace kiln::data {
namespace {

constexpr std::size_t kWriteBuffer = 4 << 20;
constexpr std::uint32_t kMaxRecord = 1u << 31;

template <typename T>
void put(std::vector<std::uint8_t>* out, T v) {
  std::size_t at = out->size();
  out->resize(at + sizeof(T));
  std::memcpy(out->data() + at, &v, sizeof(T));
}

void put_magic(std::vector<std::uint8_t>* out, const char (&magic)[9]) {
  std::size_t at = out->size();
  out->resize(at + 8);
  std::memcpy(out->data() + at, magic, 8);
}

Status pread_all(int fd, const std::string& path, std::uint64_t off, void* dst, std::size_t n) {
  auto* p = static_cast<std::uint8_t*>(dst);
  while (n > 0) {
    ssize_t r = ::pread(fd, p, n, static_cast<off_t>(off));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return errno_status(fmt::format("read {} at offset {}", path, off), errno);
    if (r == 0) return data_loss(fmt::format("read {}: unexpected end of file at offset {}", path, off));
    p += r;
    off += static_cast<std::uint64_t>(r);
    n -= static_cast<std::size_t>(r);
  }
  return Status::ok();
}

}  // namespace

Result<ShardWriter> ShardWriter::create(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return errno_status("create shard " + path, errno);
  ShardWriter w(path, fd);
  put_magic(&w.buf_, kShardMagic);
  w.pos_ = 8;
  return w;
}

ShardWriter::ShardWriter(ShardWriter&& o) noexcept
    : path_(std::move(o.path_)), fd_(o.fd_), pos_(o.pos_), offsets_(std::move(o.offsets_)),
      buf_(std::move(o.buf_)) {
  o.fd_ = -1;
}

ShardWriter::~ShardWriter() {
  if (fd_ >= 0) ::close(fd_);
}

Status ShardWriter::write_all(std::span<const std::uint8_t> b) {
  const std::uint8_t* p = b.data();
  std::size_t n = b.size();
  while (n > 0) {
    ssize_t w = ::write(fd_, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return errno_status("write shard " + path_, errno);
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return Status::ok();
}

Status ShardWriter::flush() {
  Status s = write_all(buf_);
  buf_.clear();
  return s;
}

Status ShardWriter::append(std::span<const std::uint8_t> payload) {
  if (payload.size() >= kMaxRecord) {
    return invalid_argument(fmt::format("shard {}: record of {} bytes exceeds 2 GiB", path_,
                                        payload.size()));
  }
  offsets_.push_back(pos_);
  put<std::uint32_t>(&buf_, static_cast<std::uint32_t>(payload.size()));
  put<std::uint32_t>(&buf_, static_cast<std::uint32_t>(xxh3(payload)));
  buf_.insert(buf_.end(), payload.begin(), payload.end());
  pos_ += 8 + payload.size();
  if (buf_.size() >= kWriteBuffer) return flush();
  return Status::ok();
}

Status ShardWriter::finish() {
  std::vector<std::uint8_t> table;
  for (auto o : offsets_) put<std::uint64_t>(&table, o);
  buf_.insert(buf_.end(), table.begin(), table.end());
  put<std::uint64_t>(&buf_, offsets_.size());
  put<std::uint64_t>(&buf_, xxh3(table));
  put_magic(&buf_, kShardTrailerMagic);
  pos_ += table.size() + kShardTrailerBytes;
  KILN_RETURN_IF_ERROR(flush());
  if (::fsync(fd_) != 0) return errno_status("fsync shard " + path_, errno);
  if (::close(fd_) != 0) {
    fd_ = -1;
    return errno_status("close shard " + path_, errno);
  }
  fd_ = -1;
  return Status::ok();
}

Result<ShardReader> ShardReader::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno_status("open shard " + path, errno);
  ShardReader r(path, fd);
  struct stat st {};
  if (::fstat(fd, &st) != 0) return errno_status("stat shard " + path, errno);
  auto size = static_cast<std::uint64_t>(st.st_size);
  if (size < 8 + kShardTrailerBytes) {
    return data_loss(fmt::format("shard {}: {} bytes is too short to hold a header and trailer "
                                 "(truncated?)", path, size));
  }
  char magic[8];
  KILN_RETURN_IF_ERROR(pread_all(fd, path, 0, magic, 8));
  if (std::memcmp(magic, kShardMagic, 8) != 0) {
    return data_loss(fmt::format("shard {}: bad header magic (not a kiln shard)", path));
  }
  std::uint8_t trailer[kShardTrailerBytes];
  KILN_RETURN_IF_ERROR(pread_all(fd, path, size - kShardTrailerBytes, trailer, sizeof trailer));
  std::uint64_t n = 0, table_hash = 0;
  std::memcpy(&n, trailer, 8);
  std::memcpy(&table_hash, trailer + 8, 8);
  if (std::memcmp(trailer + 16, kShardTrailerMagic, 8) != 0) {
    return data_loss(fmt::format("shard {}: bad trailer magic (truncated or corrupt)", path));
  }
  if (n > (size - 8 - kShardTrailerBytes) / 16) {
    return data_loss(fmt::format("shard {}: trailer claims {} records, too many for {} bytes", path,
                                 n, size));
  }
  r.records_end_ = size - kShardTrailerBytes - n * 8;
  std::vector<std::uint8_t> table(n * 8);
  KILN_RETURN_IF_ERROR(pread_all(fd, path, r.records_end_, table.data(), table.size()));
  if (xxh3(table) != table_hash) {
    return data_loss(fmt::format("shard {}: offset table checksum mismatch", path));
  }
  r.offsets_.resize(n);
  std::memcpy(r.offsets_.data(), table.data(), table.size());
  std::uint64_t prev = 8;
  for (std::uint64_t i = 0; i < n; ++i) {
    if (r.offsets_[i] < prev || r.offsets_[i] + 8 > r.records_end_) {
      return data_loss(fmt::format("shard {}: offset of record {} ({}) out of order or bounds", path,
                                   i, r.offsets_[i]));
    }
    prev = r.offsets_[i] + 8;
  }
  return r;
}

ShardReader::ShardReader(ShardReader&& o) noexcept
    : path_(std::move(o.path_)), fd_(o.fd_), records_end_(o.records_end_),
      offsets_(std::move(o.offsets_)) {
  o.fd_ = -1;
}

ShardReader::~ShardReader() {
  if (fd_ >= 0) ::close(fd_);
}

Status ShardReader::read(std::uint64_t i, std::vector<std::uint8_t>* out) const {
  if (i >= offsets_.size()) {
    return invalid_argument(fmt::format("shard {}: record {} of {}", path_, i, offsets_.size()));
  }
  std::uint64_t off = offsets_[i];
  std::uint64_t end = i + 1 < offsets_.size() ? offsets_[i + 1] : records_end_;
  std::uint8_t head[8];
  KILN_RETURN_IF_ERROR(pread_all(fd_, path_, off, head, 8));
  std::uint32_t len = 0, sum = 0;
  std::memcpy(&len, head, 4);
  std::memcpy(&sum, head + 4, 4);
  if (off + 8 + len != end) {
    return data_loss(fmt::format("shard {}: record {} length {} disagrees with the offset table",
                                 path_, i, len));
  }
  out->resize(len);
  KILN_RETURN_IF_ERROR(pread_all(fd_, path_, off + 8, out->data(), len));
  if (static_cast<std::uint32_t>(xxh3(*out)) != sum) {
    return data_loss(fmt::format("shard {}: record {} checksum mismatch (corrupt)", path_, i));
  }
  return Status::ok();
}

}  // namespace kiln::data
