// Shard files: length-prefixed, checksummed records and an offset footer for
// O(1) random access (byte layout in docs/formats.md, "Dataset format").
//
//   "KILNSHD1"                                        8-byte header magic
//   record*: u32 length, u32 xxh3-low32(payload), payload
//   footer:  u64 offset[n] (of each record, from file start)
//   trailer: u64 n, u64 xxh3(offset table), "KILNSIX1"
//
// All integers little-endian.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kiln/base/fd.h"
#include "kiln/base/status.h"
#include "kiln/data/verified_shards.h"

namespace kiln::data {

inline constexpr char kShardMagic[9] = "KILNSHD1";
inline constexpr char kShardTrailerMagic[9] = "KILNSIX1";
inline constexpr std::size_t kShardTrailerBytes = 24;

// Writes one shard file. Not thread-safe. finish() fsyncs and closes; the
// file is complete only after finish() returns ok (the dataset writer names
// a shard in index.json only then).
class ShardWriter {
 public:
  static Result<ShardWriter> create(const std::string& path);
  ShardWriter(ShardWriter&&) noexcept;
  ShardWriter& operator=(ShardWriter&&) = delete;
  ~ShardWriter();

  Status append(std::span<const std::uint8_t> payload);
  Status finish();

  std::uint64_t records() const { return offsets_.size(); }
  std::uint64_t bytes_written() const { return pos_; }

 private:
  ShardWriter(std::string path, Fd fd) : path_(std::move(path)), fd_(std::move(fd)) {}
  Status write_all(std::span<const std::uint8_t> b);
  Status flush();

  std::string path_;
  Fd fd_;
  std::uint64_t pos_ = 0;
  std::vector<std::uint64_t> offsets_;
  std::vector<std::uint8_t> buf_;
};

// When ShardReader::record() checks a record's xxh3. Framing is checked
// whatever the policy: header, trailer and offset table at every open() (a
// truncated file fails there), each record's length in every record().
enum class VerifyPolicy {
  // Every record() call hashes its record: catches corruption that appears
  // between two reads of an unchanged file (bit rot under the page cache).
  kEveryRead,
  // Hash each record of a file until this process has seen every record of
  // it pass, then trust that file (Note [Verify once per file] in
  // verified_shards.h): readers opened later skip hashing. A file whose
  // identity changed (replaced, resized, rewritten) is verified again.
  kOncePerFile,
};

// Reads records of one local shard file by index, in place. open() maps the
// file read-only and checks its structure: header, trailer and offset table
// (its checksum, and offsets in order and in bounds); record() checks the
// record's length and checksum before handing out a view (the checksum
// unless the policy says this process already verified this very file).
// A truncated or corrupt shard is DataLoss naming the path and record: a
// corrupt payload is never returned. Thread-safe after open(). The mapping
// lives as long as the reader.
//
// Note [Mapped shards stay valid]: a cache file is never written in place
// once committed (downloads go to a temp name and are renamed over it, and
// eviction unlinks), so neither replacing nor evicting it can change or
// truncate the pages a reader maps; the mapping keeps the old inode alive.
// A shard in use is still a held shard: the loader keeps its ShardLease as
// long as a batch may read it. Between epochs the reader stays mapped without
// a lease (Note [Warm shard mappings] in mapped_shards.h): eviction may then
// unlink the file, whose blocks stay allocated until the mapping is dropped,
// a bounded overshoot of the cache's capacity.
class ShardReader {
 public:
  static Result<ShardReader> open(const std::string& path,
                                  VerifyPolicy verify = VerifyPolicy::kEveryRead);
  ShardReader(ShardReader&&) noexcept;
  ShardReader& operator=(ShardReader&&) = delete;
  ~ShardReader();

  std::uint64_t records() const { return offsets_.size(); }
  const std::string& path() const { return path_; }
  // False when record() skips hashing: this process had verified the file.
  bool hashes_records() const { return !trusted_; }
  // The mapped file (from the fstat at open) and its size.
  const FileIdentity& identity() const { return identity_; }
  std::uint64_t mapped_bytes() const { return size_; }

  // Applies `verify` again to a reader opened earlier (Note [Warm shard
  // mappings] in mapped_shards.h): under kOncePerFile it trusts the file if
  // this process has verified it since. Not thread-safe: no record() may run
  // concurrently.
  void set_policy(VerifyPolicy verify);

  // Record `i`'s payload, a view into the mapping (valid while the reader
  // lives), after its checksum matched. InvalidArgument if i >= records();
  // DataLoss on a checksum mismatch.
  Result<std::span<const std::uint8_t>> record(std::uint64_t i) const;

  // Where record `i` lies in the mapping, its 8-byte header included, from
  // the offset table alone: nothing in the record is read or checked. For
  // prefetch() only; record(i) is the checked view. Requires i < records().
  std::span<const std::uint8_t> extent(std::uint64_t i) const {
    const std::uint64_t end = i + 1 < offsets_.size() ? offsets_[i + 1] : records_end_;
    return {base_ + offsets_[i], end - offsets_[i]};
  }

  // A hint that extent(i) is asked for soon: starts loading the offset-table
  // entries it reads (Note [Prefetch the offset table] in loader.cc).
  // Requires i < records().
  void prefetch_extent(std::uint64_t i) const {
    __builtin_prefetch(offsets_.data() + i);
    __builtin_prefetch(offsets_.data() + i + 1);  // at most one past the end; never faults
  }

  // A hint that the bytes of `extent` (of this or any reader) are read soon:
  // starts loading every cache line of them. A prefetch neither faults nor
  // fails. Note [Prefetch the records of a batch] in loader.cc.
  static void prefetch(std::span<const std::uint8_t> extent) {
    const auto first = reinterpret_cast<std::uintptr_t>(extent.data()) & ~std::uintptr_t{63};
    const auto end = reinterpret_cast<std::uintptr_t>(extent.data() + extent.size());
    for (std::uintptr_t line = first; line < end; line += 64) {
      __builtin_prefetch(reinterpret_cast<const void*>(line));
    }
  }

  // Copies record `i` into `out` (resized). InvalidArgument if i >= records().
  Status read(std::uint64_t i, std::vector<std::uint8_t>* out) const;

 private:
  // Which records passed their checksum; when all have, the file goes into
  // VerifiedShards::process().
  struct Progress {
    explicit Progress(std::uint64_t n) : words((n + 63) / 64), left(n) {}
    std::vector<std::atomic<std::uint64_t>> words;
    std::atomic<std::uint64_t> left;
  };

  ShardReader(std::string path, const std::uint8_t* base, std::size_t size)
      : path_(std::move(path)), base_(base), size_(size) {}
  Status verify();
  void passed(std::uint64_t i) const;

  std::string path_;
  const std::uint8_t* base_ = nullptr;  // mmap of the whole file, or null
  std::size_t size_ = 0;
  std::uint64_t records_end_ = 0;  // offset of the footer
  std::vector<std::uint64_t> offsets_;
  FileIdentity identity_;
  bool trusted_ = false;                // record() skips the hash
  std::unique_ptr<Progress> progress_;  // kOncePerFile and not yet trusted
};

}  // namespace kiln::data
