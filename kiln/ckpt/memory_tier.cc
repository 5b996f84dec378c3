#include "kiln/ckpt/memory_tier.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "kiln/base/deadline.h"
#include "kiln/base/file.h"
#include "kiln/base/fs.h"
#include "kiln/base/logging.h"
#include "kiln/ckpt/format.h"
#include "kiln/ckpt/fs.h"
#include "kiln/ckpt/internal/checksummed_copy.h"
#include "kiln/ckpt/internal/mapped_file.h"
#include "kiln/ckpt/internal/snapshot_records.h"
#include "kiln/ckpt/internal/snapshot_restore.h"
#include "kiln/ckpt/internal/snapshot_stream.h"
#include "kiln/base/xxh3.h"
#include "kiln/ckpt/retention.h"
#include "kiln/ckpt/verify.h"
#include "kiln/comm/agree.h"
#include "kiln/objstore/object_store.h"

namespace kiln::ckpt {
namespace {

using comm::DataType;
using internal::record_json;
using internal::record_name;
using internal::snapshot_steps;

// This kernel's boot (a hash of its boot_id; 0 when unknown): ranks that see
// the same one, and the same file identity, share the host's memory.
std::int64_t boot_id() {
  static const std::int64_t id = [] {
    auto text = read_file("/proc/sys/kernel/random/boot_id");
    if (!text.is_ok() || text->empty()) return std::int64_t{0};
    return static_cast<std::int64_t>(checksum(text->data(), text->size()) | 1);
  }();
  return id;
}

// True when `staging` holds the entries back to back in their order, the
// snapshot file's layout.
bool back_to_back(const std::vector<StagedEntry>& entries) {
  std::uint64_t at = 0;
  for (const auto& e : entries) {
    if (e.staging_offset != at) return false;
    at += e.bytes;
  }
  return true;
}

// The own snapshot made on the way out: each chunk the exchange sends is
// first copied from staging into the snapshot file's mapping (entries back
// to back, the shard file's layout, no compression) and checksummed there, a
// cache-sized piece at a time; the chunk then goes to the buddy from cache.
// One pass over the staged bytes makes both the snapshot and the replica's
// source, and the copy of chunk k+1 overlaps the transfer of chunk k. Bytes
// staged in the snapshot file itself (MemoryTier::stage) are only
// checksummed: source and destination are the same memory.
class SnapshotSource final : public internal::ChunkSource {
 public:
  SnapshotSource(int rank, const std::vector<StagedEntry>& entries, const std::byte* staging,
                 std::byte* dst)
      : entries_(entries), staging_(staging), dst_(dst) {
    shard_.rank = rank;
    shard_.file = shard_file_name(rank);
    std::uint64_t offset = 0;
    for (const auto& e : entries) {
      EntryRecord rec;
      rec.name = e.name;
      rec.is_tensor = e.is_tensor;
      rec.spec = e.spec;
      rec.offset = offset;
      rec.raw_bytes = rec.stored_bytes = e.bytes;
      shard_.entries.push_back(std::move(rec));
      offset += e.bytes;
      hashes_.push_back(std::make_unique<Xxh3>());
    }
    shard_.bytes = offset;
  }

  // Chunks come in order, each once (stream_ring's contract).
  Result<const std::byte*> chunk(std::uint64_t offset, std::size_t n, std::byte*) override {
    copy(offset + n);
    return static_cast<const std::byte*>(dst_ + offset);
  }

  // Each entry's size, in the snapshot's order.
  std::vector<std::uint64_t> entry_bytes() const {
    std::vector<std::uint64_t> sizes;
    for (const auto& e : shard_.entries) sizes.push_back(e.raw_bytes);
    return sizes;
  }

  // Copies whatever the exchange did not send, then the record of it all.
  // `sums`, when given, are the entries' checksums as the successor made
  // them (Note [The successor checksums what it copies]): the bytes were
  // staged in the snapshot, so there is nothing to copy or read.
  ShardRecord finish(std::span<const std::uint64_t> sums = {}) {
    if (!sums.empty() && sums.size() == shard_.entries.size()) {
      for (std::size_t i = 0; i < sums.size(); ++i) shard_.entries[i].xxh3 = sums[i];
      return shard_;
    }
    copy(shard_.bytes);
    for (std::size_t i = 0; i < hashes_.size(); ++i) {
      shard_.entries[i].xxh3 = hashes_[i]->digest();
    }
    return shard_;
  }

 private:
  // Copies and checksums bytes [copied_, end).
  void copy(std::uint64_t end) {
    constexpr std::uint64_t kPiece = std::uint64_t{1} << 20;
    while (copied_ < end) {
      while (copied_ >= shard_.entries[entry_].offset + entries_[entry_].bytes) ++entry_;
      const EntryRecord& rec = shard_.entries[entry_];
      const std::uint64_t in_entry = copied_ - rec.offset;
      const auto n = static_cast<std::size_t>(
          std::min({kPiece, end - copied_, entries_[entry_].bytes - in_entry}));
      const std::byte* src = staging_ + entries_[entry_].staging_offset + in_entry;
      if (src != dst_ + copied_) std::memcpy(dst_ + copied_, src, n);
      hashes_[entry_]->update(dst_ + copied_, n);
      copied_ += n;
    }
  }

  const std::vector<StagedEntry>& entries_;
  const std::byte* staging_;
  std::byte* dst_;
  ShardRecord shard_;
  std::vector<std::unique_ptr<Xxh3>> hashes_;
  std::size_t entry_ = 0;
  std::uint64_t copied_ = 0;
};

}  // namespace

std::string default_memory_dir(const std::string& checkpoint_root) {
  if (objstore::is_object_store_url(checkpoint_root)) {
    return "/dev/shm/kiln-ckpt-" +
           checksum_hex(checksum(checkpoint_root.data(), checkpoint_root.size()));
  }
  std::error_code ec;
  auto abs = std::filesystem::weakly_canonical(std::filesystem::absolute(checkpoint_root), ec);
  if (ec) abs = std::filesystem::absolute(checkpoint_root).lexically_normal();
  std::string key = abs.string();
  while (key.size() > 1 && key.back() == '/') key.pop_back();
  return "/dev/shm/kiln-ckpt-" + checksum_hex(checksum(key.data(), key.size()));
}

Result<std::unique_ptr<MemoryTier>> MemoryTier::open(MemoryTierOptions options) {
  if (options.dir.empty()) return invalid_argument("MemoryTier: empty directory");
  auto tier = std::unique_ptr<MemoryTier>(new MemoryTier(std::move(options)));
  // A new tier in a process that outlived its group (the survivor of a
  // re-formed job) frees the mappings of files deleted meanwhile before it
  // allocates anything (Note [Reclaiming a dead buddy's memory]).
  internal::release_unlinked_mappings();
  std::error_code ec;
  std::filesystem::create_directories(tier->rank_dir_, ec);
  if (ec) {
    return errno_status("create in-memory checkpoint directory " + tier->rank_dir_, ec.value());
  }
  return tier;
}

MemoryTier::MemoryTier(MemoryTierOptions options)
    : options_(std::move(options)),
      rank_(options_.comm ? options_.comm->rank() : 0),
      world_(options_.comm ? options_.comm->size() : 1),
      pred_((rank_ + world_ - 1) % world_),
      rank_dir_(fmt::format("{}/rank-{}", options_.dir, rank_)),
      bounce_(std::make_unique<internal::Bounce>()) {}

MemoryTier::~MemoryTier() = default;

// Note [Recycled snapshot files]: the step directory a store retires becomes
// rank_dir/spare (record files removed first, so it never reads as a
// snapshot) and the next store renames it into place and writes over its
// files: their tmpfs pages stay allocated, and allocating pages costs more
// than copying into them (Note [Snapshot bytes at memory speed]). The price
// is memory: a rank's steady state holds two generations (its snapshot and
// replica, and the spare), which a store's peak needed anyway.
Status MemoryTier::prepare_step_dir(const std::string& dir) {
  Fs& fs = *Fs::posix();
  KILN_RETURN_IF_ERROR(fs.remove_tree(dir));
  const std::string spare = rank_dir_ + "/spare";
  if (::access(spare.c_str(), F_OK) != 0) return fs.make_dir(dir);
  KILN_RETURN_IF_ERROR(fs.rename(spare, dir));
  // Keep only the two files this rank writes again (a re-formed world may
  // have left others).
  const std::string mine = shard_file_name(rank_), pred = shard_file_name(pred_);
  auto names = list_dir(dir);
  if (!names.is_ok()) return names.status();
  for (const auto& n : *names) {
    if (n != mine && n != pred) KILN_RETURN_IF_ERROR(fs.remove_tree(dir + "/" + n));
  }
  internal::release_unlinked_mappings();
  return Status::ok();
}

void MemoryTier::retire_older_than(std::int64_t step) {
  Fs& fs = *Fs::posix();
  const std::string spare = rank_dir_ + "/spare";
  bool have_spare = ::access(spare.c_str(), F_OK) == 0;
  for (std::int64_t s : snapshot_steps(rank_dir_)) {
    if (s == step) continue;
    const std::string dir = rank_dir_ + "/" + step_dir_name(s);
    if (!have_spare) {
      // Records first: from here on the directory is no snapshot.
      bool unlinked = true;
      for (int r : {rank_, pred_}) {
        const std::string rec = dir + "/" + record_name(r);
        if (::unlink(rec.c_str()) != 0 && errno != ENOENT) unlinked = false;
      }
      if (unlinked && fs.rename(dir, spare).is_ok()) {
        have_spare = true;
        continue;
      }
    }
    (void)fs.remove_tree(dir);
  }
  internal::release_unlinked_mappings();  // the deleted steps' memory is freed
}

// Note [Staged in the snapshot]: a checkpointer copies the training state
// into staging memory anyway (the stall training waits for); when that
// memory is the snapshot file itself, the store has no copy of its own to
// make, only the checksums (docs/perf.md, issue 19: the copy was a third of
// the store). stage() hands out the spare's file, which has no record and so
// is no snapshot: a crash while staging or storing leaves the newest
// complete snapshot untouched. store() renames the spare into place
// (prepare_step_dir; the rename keeps the inode, so map_for_write finds the
// same mapping) and sees the staging pointer is the file's own memory.
Result<std::byte*> MemoryTier::stage(std::uint64_t bytes) {
  const std::string spare = rank_dir_ + "/spare";
  KILN_RETURN_IF_ERROR(Fs::posix()->make_dir(spare));
  auto file = internal::map_for_write(spare + "/" + shard_file_name(rank_), bytes);
  if (!file.is_ok()) {
    return file.status().with_context(fmt::format("staging rank {}'s in-memory snapshot", rank_));
  }
  staged_ = std::move(*file);
  return staged_->data();
}

Status MemoryTier::store(std::int64_t step, const std::vector<StagedEntry>& entries,
                         const std::byte* staging) {
  const std::string dir = rank_dir_ + "/" + step_dir_name(step);
  store_stats_ = MemoryStoreStats{step};
  std::uint64_t total = 0;
  for (const auto& e : entries) total += e.bytes;
  // A step stored again (a job restarted from an older step) replaces the old copy.
  Status own = prepare_step_dir(dir);
  std::shared_ptr<internal::MappedFile> file;
  if (own.is_ok()) {
    auto f = internal::map_for_write(dir + "/" + shard_file_name(rank_), total);
    own = f.status();
    if (f.is_ok()) file = std::move(*f);
  }
  if (file && total > 0 && file->data() == staging && !back_to_back(entries)) {
    // Staged in the file itself but laid out otherwise: no copy can fix it.
    own = invalid_argument(fmt::format(
        "{}: bytes staged in the snapshot file must hold the entries back to back", dir));
    file.reset();
  }
  store_stats_.staged = file && total > 0 && file->data() == staging;
  std::optional<SnapshotSource> snapshot;
  if (file) snapshot.emplace(rank_, entries, staging, file->data());
  std::string json;
  // The exchange sends this rank's bytes and, once they are all in the
  // snapshot, its record (empty when there is no snapshot: the successor
  // then keeps no replica).
  auto make_record = [&](std::span<const std::uint64_t> sums) -> std::string {
    if (!snapshot) return {};
    ShardRecord rec = snapshot->finish(sums);
    json = record_json(step, world_, rec);
    // tmpfs: an fsync would change nothing.
    own = write_file_atomic(*Fs::posix(), dir + "/" + record_name(rank_), json,
                            Durability::kAtomicOnly);
    if (!own.is_ok()) json.clear();
    return json;
  };
  // Bytes staged in the snapshot are complete before the exchange begins:
  // a successor that copies them on this host can checksum them as it goes.
  std::vector<std::uint64_t> sizes;
  if (snapshot && store_stats_.staged) sizes = snapshot->entry_bytes();
  Status ex = exchange(step, dir, snapshot ? &*snapshot : nullptr, file.get(), snapshot ? total : 0,
                       sizes, make_record);
  if (!ex.is_ok()) return ex;
  if (!own.is_ok()) {
    return own.with_context(fmt::format("in-memory snapshot of step {} on rank {}", step, rank_));
  }
  retire_older_than(step);  // only once this one is complete
  return Status::ok();
}

// Note [Replicas on one host]: a replica's bytes streamed through the
// communicator are copied twice on one host (the shared-memory transport
// copies into its slot and out of it) and again into the sender's cache;
// when the sender's snapshot file is on this host, the receiver copies it
// straight from there into its replica file, once. The sender names its
// file (boot, device, inode); the receiver uses it only if the file at the
// path the sender's layout gives is that very file, and says so to the
// sender, which then streams nothing. The copy starts only after the
// sender's record arrived, so the file is complete; the sender writes it
// again only after a later stage(), which needs the next store's collective
// first. A replica on another host (the case the tier exists for) is
// streamed.

// Note [The successor checksums what it copies]: a store whose bytes were
// staged in the snapshot file has no copy of its own to make, only the
// entries' checksums (Note [Staged in the snapshot]); on one host its
// successor then copies the same file into its replica (Note [Replicas on
// one host]). Done apart, that is two passes over the snapshot out of
// memory: the owner's checksum, then the successor's copy, about 1.75 x a
// memcpy of it (docs/perf.md, issue 19, session 11). The successor makes
// both in one: it checksums each cache-sized piece as it copies it
// (internal::copy_and_checksum) and sends the sums back for the owner's
// record. The owner sends its entries' sizes first; the sums describe its
// own file's bytes, read by the successor, so the record is what the owner
// would have written, and a replica copied wrongly is caught at its restore
// as before. A successor on another host, or bytes not staged, leave the
// checksums to the owner.

// Sends this rank's snapshot (its bytes as `source` makes them, then the
// record `record()` returns) to rank r+1 while receiving rank r-1's into the
// replica file. Sizes go first; a rank whose own snapshot failed sends no
// bytes and an empty record, and its successor keeps nothing, yet both finish.
// `entry_bytes`, when not empty, are the sizes of the entries of a snapshot
// complete in its file: a successor that copies the file on this host
// checksums them, and record() gets its sums (else no sums).
Status MemoryTier::exchange(
    std::int64_t step, const std::string& dir, internal::ChunkSource* source,
    const internal::MappedFile* own, std::uint64_t send_bytes,
    std::span<const std::uint64_t> entry_bytes,
    const std::function<std::string(std::span<const std::uint64_t>)>& record) {
  if (world_ == 1) {
    record({});
    return Status::ok();
  }
  const int to = (rank_ + 1) % world_, from = pred_;
  const auto t = options_.timeout;
  auto* comm = options_.comm;
  // The size, the identity of the file it lies in (Note [Replicas on one
  // host]), and how many entry sizes follow.
  const bool named = own != nullptr && send_bytes > 0;
  const auto n_sizes = static_cast<std::int64_t>(named ? entry_bytes.size() : 0);
  std::int64_t mine[5] = {static_cast<std::int64_t>(send_bytes), named ? boot_id() : 0,
                          named ? static_cast<std::int64_t>(own->dev()) : 0,
                          named ? static_cast<std::int64_t>(own->ino()) : 0, n_sizes};
  std::int64_t theirs[5] = {0, 0, 0, 0, 0};
  KILN_RETURN_IF_ERROR(comm->sendrecv(mine, 5, to, theirs, 5, from, DataType::kInt64)->wait(t));
  const auto their_size = static_cast<std::uint64_t>(theirs[0]);
  std::vector<std::uint64_t> their_entries(static_cast<std::size_t>(theirs[4]));
  KILN_RETURN_IF_ERROR(comm->sendrecv(entry_bytes.data(), static_cast<std::size_t>(n_sizes), to,
                                      their_entries.data(), their_entries.size(), from,
                                      DataType::kInt64)
                           ->wait(t));
  std::shared_ptr<internal::MappedFile> buddy;
  if (their_size > 0) buddy = buddy_file_on_this_host(step, from, theirs + 1, their_size);
  std::uint64_t listed = 0;
  for (std::uint64_t b : their_entries) listed += b;
  // 0: streamed to me; 1: I copy your file; 2: I copy it and checksum it for you.
  const bool i_sum = buddy && !their_entries.empty() && listed == their_size;
  std::int64_t i_copy = buddy ? (i_sum ? 2 : 1) : 0, successor_copies = 0;
  KILN_RETURN_IF_ERROR(
      comm->sendrecv(&i_copy, 1, from, &successor_copies, 1, to, DataType::kInt64)->wait(t));
  const std::string bin_path = dir + "/" + shard_file_name(from);
  std::shared_ptr<internal::MappedFile> replica;
  if (their_size > 0) {
    auto f = internal::map_for_write(bin_path, their_size);
    if (f.is_ok()) {
      replica = std::move(*f);
    } else {
      log()->warn("in-memory replica of rank {} step {} not kept: {}", from, step,
                  f.status().to_string());
    }
  }
  std::optional<internal::MappedSink> sink;
  if (replica) sink.emplace(replica);
  internal::DiscardSink discard;
  Status local;
  KILN_RETURN_IF_ERROR(
      internal::stream_ring(*comm, to, source, successor_copies ? 0 : send_bytes, from,
                            sink ? static_cast<internal::ChunkSink*>(&*sink) : &discard,
                            buddy ? 0 : their_size, t, *bounce_, &local));
  // The buddy's file is complete (staged before its store began): copied
  // and checksummed in one pass (Note [The successor checksums what it copies]).
  std::vector<std::uint64_t> their_sums, my_sums;
  if (i_sum) their_sums = internal::copy_and_checksum(replica ? replica->data() : nullptr,
                                                     buddy->data(), their_entries);
  if (successor_copies == 2) my_sums.resize(static_cast<std::size_t>(n_sizes));
  KILN_RETURN_IF_ERROR(comm->sendrecv(their_sums.data(), their_sums.size(), from, my_sums.data(),
                                      my_sums.size(), to, DataType::kInt64)
                           ->wait(t));
  store_stats_.sums_from_successor = !my_sums.empty();
  const std::string json = record(my_sums);
  std::int64_t json_out = static_cast<std::int64_t>(json.size()), json_in = 0;
  KILN_RETURN_IF_ERROR(
      comm->sendrecv(&json_out, 1, to, &json_in, 1, from, DataType::kInt64)->wait(t));
  std::string their_json(static_cast<std::size_t>(json_in), '\0');
  KILN_RETURN_IF_ERROR(comm->sendrecv(json.data(), json.size(), to, their_json.data(),
                                      their_json.size(), from, DataType::kUInt8)
                           ->wait(t));
  if (!local.is_ok()) {
    log()->warn("in-memory replica of rank {} step {} not kept: {}", from, step, local.to_string());
  } else if (replica && !their_json.empty()) {
    // The sender's record came after its last byte: its file is complete.
    if (buddy && !i_sum) std::memcpy(replica->data(), buddy->data(), their_size);
    store_stats_.replica_on_host = buddy != nullptr;
    Status s = write_file_atomic(*Fs::posix(), dir + "/" + record_name(from), their_json,
                                 Durability::kAtomicOnly);
    if (!s.is_ok()) {
      log()->warn("in-memory replica of rank {} step {}: {}", from, step, s.to_string());
    }
  }
  return Status::ok();
}

std::shared_ptr<internal::MappedFile> MemoryTier::buddy_file_on_this_host(
    std::int64_t step, int from, const std::int64_t identity[3], std::uint64_t bytes) const {
  if (identity[0] == 0 || identity[0] != boot_id()) return nullptr;
  const std::string path = fmt::format("{}/rank-{}/{}/{}", options_.dir, from, step_dir_name(step),
                                       shard_file_name(from));
  auto same = [&](dev_t dev, ino_t ino, std::uint64_t size) {
    return static_cast<std::int64_t>(dev) == identity[1] &&
           static_cast<std::int64_t>(ino) == identity[2] && size == bytes;
  };
  // Looked at before it is mapped: another file at that path is left alone.
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 ||
      !same(st.st_dev, st.st_ino, static_cast<std::uint64_t>(st.st_size))) {
    return nullptr;
  }
  auto file = internal::map_existing(path);
  if (!file.is_ok() || !same((*file)->dev(), (*file)->ino(), (*file)->size())) return nullptr;
  return std::move(*file);
}

Status MemoryTier::clear() {
  KILN_RETURN_IF_ERROR(Fs::posix()->remove_tree(rank_dir_));
  internal::release_unlinked_mappings();
  // The last rank of the host to finish removes the job's directory too
  // (rmdir fails, harmlessly, while another rank's directory remains).
  ::rmdir(options_.dir.c_str());
  return Status::ok();
}

}  // namespace kiln::ckpt
