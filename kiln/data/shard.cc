#include "kiln/data/shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

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

}  // namespace

Result<ShardWriter> ShardWriter::create(const std::string& path) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid()) return errno_status("create shard " + path, errno);
  ShardWriter w(path, std::move(fd));
  put_magic(&w.buf_, kShardMagic);
  w.pos_ = 8;
  return w;
}

ShardWriter::ShardWriter(ShardWriter&& o) noexcept = default;
ShardWriter::~ShardWriter() = default;

Status ShardWriter::write_all(std::span<const std::uint8_t> b) {
  const std::uint8_t* p = b.data();
  std::size_t n = b.size();
  while (n > 0) {
    ssize_t w = ::write(fd_.get(), p, n);
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
  if (::fsync(fd_.get()) != 0) return errno_status("fsync shard " + path_, errno);
  if (fd_.close() != 0) return errno_status("close shard " + path_, errno);
  return Status::ok();
}

Result<ShardReader> ShardReader::open(const std::string& path, VerifyPolicy verify) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return errno_status("open shard " + path, errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return errno_status("stat shard " + path, errno);
  auto size = static_cast<std::uint64_t>(st.st_size);
  if (size < 8 + kShardTrailerBytes) {
    return data_loss(fmt::format("shard {}: {} bytes is too short to hold a header and trailer "
                                 "(truncated?)", path, size));
  }
  // MAP_POPULATE: the workers read every page; mapping them all in one call
  // here (the prefetcher's thread, ahead of need) spares them a page fault
  // per 4 KiB (fault-around maps a few more) in the middle of a batch.
  void* base = ::mmap(nullptr, size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd.get(), 0);
  int map_errno = errno;
  fd.reset();  // the mapping keeps the file open
  if (base == MAP_FAILED) return errno_status("mmap shard " + path, map_errno);
  ShardReader r(path, static_cast<const std::uint8_t*>(base), size);
  KILN_RETURN_IF_ERROR(r.verify());
  // The identity from the same fstat as the mapped size: the file this
  // reader maps (Note [Verify once per file]).
  r.identity_ = FileIdentity::of(st);
  r.set_policy(verify);
  return r;
}

void ShardReader::set_policy(VerifyPolicy verify) {
  if (verify == VerifyPolicy::kEveryRead) {
    trusted_ = false;
    progress_.reset();
    return;
  }
  if (trusted_) return;
  trusted_ = offsets_.empty() || VerifiedShards::process().contains(identity_);
  if (trusted_) {
    progress_.reset();
  } else if (progress_ == nullptr) {
    progress_ = std::make_unique<Progress>(offsets_.size());
  }
}

Status ShardReader::verify() {
  const std::string& path = path_;
  const std::uint64_t size = size_;
  if (std::memcmp(base_, kShardMagic, 8) != 0) {
    return data_loss(fmt::format("shard {}: bad header magic (not a kiln shard)", path));
  }
  const std::uint8_t* trailer = base_ + size - kShardTrailerBytes;
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
  records_end_ = size - kShardTrailerBytes - n * 8;
  std::span<const std::uint8_t> table(base_ + records_end_, n * 8);
  if (xxh3(table) != table_hash) {
    return data_loss(fmt::format("shard {}: offset table checksum mismatch", path));
  }
  offsets_.resize(n);
  // An empty shard's table is empty, and memcpy from/to null is undefined
  // even for 0 bytes (found by fuzz/shard_fuzz.cc).
  if (n > 0) std::memcpy(offsets_.data(), table.data(), table.size());
  std::uint64_t prev = 8;
  for (std::uint64_t i = 0; i < n; ++i) {
    // Subtracting, not adding: an offset near 2^64 must not wrap past the check.
    if (offsets_[i] < prev || offsets_[i] > records_end_ - 8) {
      return data_loss(fmt::format("shard {}: offset of record {} ({}) out of order or bounds", path,
                                   i, offsets_[i]));
    }
    prev = offsets_[i] + 8;
  }
  // Each record's length and checksum are checked in record(), where its
  // first cache line is read anyway (Note [Checksum where it is read]):
  // checking every length here cost one cache miss per record at every open
  // (20 000 per 16 MiB shard of 784 B samples) for records the reader may
  // never touch.
  return Status::ok();
}

ShardReader::ShardReader(ShardReader&& o) noexcept
    : path_(std::move(o.path_)), base_(std::exchange(o.base_, nullptr)),
      size_(std::exchange(o.size_, 0)), records_end_(o.records_end_),
      offsets_(std::move(o.offsets_)), identity_(o.identity_), trusted_(o.trusted_),
      progress_(std::move(o.progress_)) {}

ShardReader::~ShardReader() {
  if (base_ != nullptr) ::munmap(const_cast<std::uint8_t*>(base_), size_);
}

Result<std::span<const std::uint8_t>> ShardReader::record(std::uint64_t i) const {
  if (i >= offsets_.size()) {
    return invalid_argument(fmt::format("shard {}: record {} of {}", path_, i, offsets_.size()));
  }
  // Note [Checksum where it is read]: hashing a record right before the
  // loader copies it leaves it in L1/L2 for the copy, so the bytes come from
  // memory once. Hashing the whole shard at open() instead reads it twice
  // per epoch (same-run A/B on the 2-vCPU VM: 2.7-2.8 GB/s that way, 3.7-3.8
  // GB/s this way). Either way no unverified byte is ever handed out.
  std::uint64_t off = offsets_[i] + 8;
  std::uint64_t end = i + 1 < offsets_.size() ? offsets_[i + 1] : records_end_;
  std::span<const std::uint8_t> payload(base_ + off, end - off);
  std::uint32_t len = 0;
  std::memcpy(&len, base_ + off - 8, 4);
  if (len != payload.size()) {
    return data_loss(fmt::format("shard {}: record {} length {} disagrees with the offset table",
                                 path_, i, len));
  }
  if (trusted_) return payload;  // VerifyPolicy::kOncePerFile, and verified already
  std::uint32_t sum = 0;
  std::memcpy(&sum, base_ + off - 4, 4);
  if (static_cast<std::uint32_t>(xxh3(payload)) != sum) {
    return data_loss(fmt::format("shard {}: record {} checksum mismatch (corrupt)", path_, i));
  }
  if (progress_ != nullptr) passed(i);
  return payload;
}

void ShardReader::passed(std::uint64_t i) const {
  const std::uint64_t bit = std::uint64_t{1} << (i % 64);
  if ((progress_->words[i / 64].fetch_or(bit, std::memory_order_relaxed) & bit) != 0) return;
  if (progress_->left.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    VerifiedShards::process().add(identity_);  // every record of this file passed
  }
}

Status ShardReader::read(std::uint64_t i, std::vector<std::uint8_t>* out) const {
  KILN_ASSIGN_OR_RETURN(std::span<const std::uint8_t> rec, record(i));
  out->assign(rec.begin(), rec.end());
  return Status::ok();
}

}  // namespace kiln::data
