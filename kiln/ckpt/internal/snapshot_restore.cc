#include "kiln/ckpt/internal/snapshot_restore.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "kiln/ckpt/shard_writer.h"

namespace kiln::ckpt::internal {
namespace {

// The entry as load_step would return it for `rank` of `world`: tensors cut
// to the rank's even_rows (a replicated tensor to its part, like storage
// does), blobs as they are. DataLoss when the snapshot lacks rows the rank
// needs (it saved another split): storage has them.
Result<LoadedEntry> as_loaded(const EntryRecord& e, std::vector<std::byte> bytes, int rank,
                              int world, bool rows_as_saved, const std::string& where) {
  if (!e.is_tensor) return LoadedEntry{e.name, false, {}, std::move(bytes)};
  if (rows_as_saved) return LoadedEntry{e.name, true, e.spec, std::move(bytes)};
  RowRange want = even_rows(e.spec.shape[0], rank, world);
  const std::int64_t lo = e.spec.row_offset, hi = lo + e.spec.rows;
  if (want.offset < lo || want.offset + want.count > hi) {
    return data_loss(fmt::format("{}: tensor '{}' holds rows [{}, {}), rank {} needs [{}, {})",
                                 where, e.name, lo, hi, rank, want.offset,
                                 want.offset + want.count));
  }
  TensorSpec spec{e.spec.dtype, e.spec.shape, want.offset, want.count};
  const std::size_t row = e.spec.row_bytes();
  if (want.offset != lo || want.count != e.spec.rows) {
    auto first = bytes.begin() + static_cast<std::ptrdiff_t>((want.offset - lo) * row);
    bytes = std::vector<std::byte>(first, first + static_cast<std::ptrdiff_t>(want.count * row));
  }
  return LoadedEntry{e.name, true, spec, std::move(bytes)};
}

// True when the snapshot holds exactly the rows `rank` of `world` gets, so
// its stored bytes are the target's bytes.
bool rows_are_mine(const EntryRecord& e, int rank, int world, bool rows_as_saved) {
  if (!e.is_tensor || e.compression != Compression::kNone) return false;
  if (rows_as_saved) return true;
  RowRange want = even_rows(e.spec.shape[0], rank, world);
  return want.offset == e.spec.row_offset && want.count == e.spec.rows;
}

}  // namespace

RestoreSink::RestoreSink(ShardRecord record, int rank, int world,
                         std::span<const RecoverTarget> into, std::string where, bool rows_as_saved)
    : record_(std::move(record)),
      rank_(rank),
      world_(world),
      rows_as_saved_(rows_as_saved),
      where_(std::move(where)) {
  std::sort(record_.entries.begin(), record_.entries.end(),
            [](const EntryRecord& a, const EntryRecord& b) { return a.offset < b.offset; });
  slots_.resize(record_.entries.size());
  for (std::size_t i = 0; i < slots_.size(); ++i) {
    const EntryRecord& e = record_.entries[i];
    Slot& s = slots_[i];
    for (const auto& t : into) {
      if (t.name == e.name) s.target = &t;
    }
    s.direct = s.target != nullptr && rows_are_mine(e, rank_, world_, rows_as_saved_) &&
               s.target->bytes == e.stored_bytes;
    if (s.direct) {
      s.dst = s.target->data;
    } else {
      s.own.resize(e.stored_bytes);
      s.dst = s.own.data();
    }
    s.hash = std::make_unique<Xxh3>();
  }
}

RestoreSink::~RestoreSink() = default;

int RestoreSink::entry_at(std::uint64_t offset) const {
  auto it = std::upper_bound(record_.entries.begin(), record_.entries.end(), offset,
                             [](std::uint64_t o, const EntryRecord& e) { return o < e.offset; });
  if (it == record_.entries.begin()) return -1;
  int i = static_cast<int>(it - record_.entries.begin()) - 1;
  const EntryRecord& e = record_.entries[static_cast<std::size_t>(i)];
  return offset < e.offset + e.stored_bytes ? i : -1;
}

std::byte* RestoreSink::place(std::uint64_t offset, std::size_t n, std::byte* bounce) {
  int i = entry_at(offset);
  if (i < 0) return bounce;
  const EntryRecord& e = record_.entries[static_cast<std::size_t>(i)];
  if (offset + n > e.offset + e.stored_bytes) return bounce;  // spans entries
  return slots_[static_cast<std::size_t>(i)].dst + (offset - e.offset);
}

Status RestoreSink::done(std::uint64_t offset, std::size_t n, const std::byte* at) {
  const std::uint64_t end = offset + n;
  int first = entry_at(offset);
  std::size_t i = first >= 0 ? static_cast<std::size_t>(first) : 0;
  for (; i < record_.entries.size(); ++i) {
    const EntryRecord& e = record_.entries[i];
    if (e.offset >= end) break;
    const std::uint64_t lo = std::max(offset, e.offset);
    const std::uint64_t hi = std::min(end, e.offset + e.stored_bytes);
    if (lo >= hi) continue;
    Slot& s = slots_[i];
    const std::byte* src = at + (lo - offset);
    std::byte* dst = s.dst + (lo - e.offset);
    if (src != dst) std::memcpy(dst, src, hi - lo);
    // Checksummed where it now lies: just written, still in cache.
    s.hash->update(dst, hi - lo);
  }
  return Status::ok();
}

Result<std::vector<LoadedEntry>> RestoreSink::finish() {
  std::vector<LoadedEntry> out;
  out.reserve(slots_.size());
  for (std::size_t i = 0; i < slots_.size(); ++i) {
    const EntryRecord& e = record_.entries[i];
    Slot& s = slots_[i];
    const std::uint64_t got = s.hash->digest();
    if (got != e.xxh3) {
      return data_loss(fmt::format("{}: entry '{}' checksum {} != record {} (corrupt snapshot)",
                                   where_, e.name, checksum_hex(got), checksum_hex(e.xxh3)));
    }
    if (s.direct) {
      out.push_back(LoadedEntry{e.name, true, e.spec, {}, /*in_place=*/true});
      continue;
    }
    std::vector<std::byte> bytes = std::move(s.own);
    if (e.compression != Compression::kNone) {
      KILN_ASSIGN_OR_RETURN(bytes, decode_entry(e, std::move(bytes), where_));
    }
    KILN_ASSIGN_OR_RETURN(LoadedEntry entry, as_loaded(e, std::move(bytes), rank_, world_, rows_as_saved_, where_));
    if (s.target != nullptr) {
      // A target whose rows the snapshot holds among others: copied out of them.
      if (s.target->bytes != entry.data.size()) {
        return invalid_argument(fmt::format(
            "{}: recover target for '{}' has {} bytes, the rank's rows of it are {} bytes", where_,
            e.name, s.target->bytes, entry.data.size()));
      }
      std::memcpy(s.target->data, entry.data.data(), entry.data.size());
      entry.data = {};
      entry.in_place = true;
    }
    out.push_back(std::move(entry));
  }
  return out;
}

}  // namespace kiln::ckpt::internal
