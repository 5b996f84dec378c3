#include "kiln/ckpt/shard_writer.h"

#include <fmt/format.h>
#include <zstd.h>

#include <algorithm>

#include "kiln/base/deadline.h"
#include "kiln/base/xxh3.h"

namespace kiln::ckpt {
namespace {

// Large enough that write() runs at device speed, small enough that the
// checksum of a chunk is still in cache when it is written.
constexpr std::size_t kChunk = 8 << 20;
// Writeback is started every this many bytes (RocksDB's bytes_per_sync): the
// disk works while later chunks are copied in, and dirty pages never pile up.
constexpr std::uint64_t kWritebackEvery = 64 << 20;

}  // namespace

Result<ShardRecord> write_shard(Fs& fs, const std::string& dir, int rank,
                                const std::vector<StagedEntry>& entries, const std::byte* staging,
                                const ShardWriteOptions& options, ShardWriteTimes* times) {
  KILN_ASSIGN_OR_RETURN(auto file, fs.create(dir + "/" + shard_file_name(rank)));
  return write_shard_to(*file, rank, entries, staging, options, times);
}

Result<ShardRecord> write_shard_to(FsWriter& out, int rank, const std::vector<StagedEntry>& entries,
                                   const std::byte* staging, const ShardWriteOptions& options,
                                   ShardWriteTimes* times) {
  ShardWriteTimes t;
  // Adds the seconds since `at` to `into` and restarts the clock.
  auto lap = [](Clock::time_point& at, double& into) {
    auto now = Clock::now();
    into += std::chrono::duration<double>(now - at).count();
    at = now;
  };
  auto at = Clock::now();
  ShardRecord shard;
  shard.rank = rank;
  shard.file = shard_file_name(rank);
  FsWriter* file = &out;
  std::vector<char> zbuf;
  std::uint64_t offset = 0;
  std::uint64_t written_back = 0;  // start of the bytes not yet handed to writeback
  for (const auto& e : entries) {
    EntryRecord rec;
    rec.name = e.name;
    rec.is_tensor = e.is_tensor;
    rec.spec = e.spec;
    rec.offset = offset;
    rec.raw_bytes = e.bytes;
    const std::byte* src = staging + e.staging_offset;
    const void* out = src;
    std::size_t out_bytes = e.bytes;
    if (options.compression == Compression::kZstd && e.bytes > 0) {
      zbuf.resize(ZSTD_compressBound(e.bytes));
      std::size_t z = ZSTD_compress(zbuf.data(), zbuf.size(), src, e.bytes, options.zstd_level);
      if (ZSTD_isError(z)) {
        return internal_error(fmt::format("zstd compress of entry '{}' ({} bytes): {}", e.name,
                                          e.bytes, ZSTD_getErrorName(z)));
      }
      rec.compression = Compression::kZstd;
      out = zbuf.data();
      out_bytes = z;
    }
    lap(at, t.compress_s);
    Xxh3 st;
    const char* p = static_cast<const char*>(out);
    Status ws;
    for (std::size_t done = 0; done < out_bytes && ws.is_ok();) {
      std::size_t n = std::min(kChunk, out_bytes - done);
      st.update(p + done, n);
      lap(at, t.checksum_s);
      ws = file->append(p + done, n);
      done += n;
      if (offset + done - written_back >= kWritebackEvery) {
        file->start_writeback(written_back, offset + done - written_back);
        written_back = offset + done;
      }
      lap(at, t.append_s);
    }
    rec.xxh3 = st.digest();
    if (!ws.is_ok())
      return ws.with_context(fmt::format("shard of rank {}, entry '{}'", rank, e.name));
    rec.stored_bytes = out_bytes;
    offset += out_bytes;
    shard.entries.push_back(std::move(rec));
  }
  KILN_RETURN_IF_ERROR(file->sync().with_context(fmt::format("shard of rank {}", rank)));
  KILN_RETURN_IF_ERROR(file->close());
  lap(at, t.close_s);
  if (times != nullptr) *times = t;
  shard.bytes = offset;
  return shard;
}

Result<std::vector<std::byte>> decode_entry(const EntryRecord& rec, std::vector<std::byte> stored,
                                            const std::string& where) {
  std::uint64_t got = checksum(stored.data(), stored.size());
  if (got != rec.xxh3) {
    return data_loss(fmt::format("{}: entry '{}' checksum {} != manifest {} (corrupt shard)", where,
                                 rec.name, checksum_hex(got), checksum_hex(rec.xxh3)));
  }
  if (rec.compression == Compression::kNone) return stored;
  std::vector<std::byte> raw(rec.raw_bytes);
  std::size_t n = ZSTD_decompress(raw.data(), raw.size(), stored.data(), stored.size());
  if (ZSTD_isError(n) || n != rec.raw_bytes) {
    return data_loss(fmt::format("{}: entry '{}' does not decompress to {} bytes", where, rec.name,
                                 rec.raw_bytes));
  }
  return raw;
}

}  // namespace kiln::ckpt
