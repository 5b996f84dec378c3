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

// Snapshots of one rank that recovery considers: the newest few, so a step
// interrupted mid-exchange still leaves the one before it on the peers that
// finished it.
constexpr int kReported = 2;

std::string record_name(int rank) { return fmt::format("shard-{:05d}.json", rank); }

std::string record_json(std::int64_t step, int world, const ShardRecord& rec) {
  nlohmann::json j;
  j["step"] = step;
  j["world_size"] = world;
  j["shard"] = nlohmann::json::parse(to_json(rec));
  return j.dump();
}

// The shard record inside a record JSON of step `step` taken at `world`
// ranks; DataLoss naming `where` otherwise.
Result<ShardRecord> parse_record(const std::string& text, std::int64_t step, int world,
                                 const std::string& where) {
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.contains("shard") || j.value("step", -1LL) != step ||
      j.value("world_size", -1) != world) {
    return data_loss(
        fmt::format("{}: snapshot record missing, malformed, or not of step {} at {} "
                    "ranks",
                    where, step, world));
  }
  return parse_shard_record(j["shard"].dump(), where);
}

// A complete snapshot of `rank` taken at `world` ranks, or nullopt (absent,
// torn, or from another world size) — recovery then looks elsewhere.
std::optional<ShardRecord> read_snapshot(const std::string& step_dir, std::int64_t step, int rank,
                                         int world) {
  auto text = read_file(step_dir + "/" + record_name(rank));
  if (!text.is_ok()) return std::nullopt;
  auto rec = parse_record(*text, step, world, step_dir);
  if (!rec.is_ok() || rec->rank != rank) return std::nullopt;
  auto size = file_size(step_dir + "/" + rec->file);
  if (!size.is_ok() || *size != rec->bytes) return std::nullopt;
  return *rec;
}

// Committed snapshot steps in a rank directory, newest first.
std::vector<std::int64_t> snapshot_steps(const std::string& rank_dir) {
  std::vector<std::int64_t> steps;
  auto names = list_dir(rank_dir);
  if (!names.is_ok()) return steps;
  for (const auto& n : *names) {
    if (auto s = parse_step_dir_name(n)) steps.push_back(*s);
  }
  std::sort(steps.rbegin(), steps.rend());
  return steps;
}

bool has(const std::int64_t* steps, std::int64_t s) {
  return std::find(steps, steps + kReported, s) != steps + kReported;
}

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

// Note [Reclaiming a dead buddy's memory]: a rank that copied its buddy's
// snapshot on this host keeps that file mapped (Note [Replicas on one host],
// Note [Mapped snapshot files]), so when the buddy's memory directory is
// deleted the pages stay allocated until this process drops the mapping.
// Dropping it frees the file's pages and tears down their page tables: 0.05-
// 0.1 s per 512 MiB on a paravirtualised MMU, and on another thread it is no
// cheaper (the teardown interrupts the process's other threads with TLB
// shootdowns; docs/perf.md, issue 19, session 9). recover() therefore leaves
// it to the next store() (prepare_step_dir, on the checkpointer's writer
// thread), clear(), or a new tier's open(): the job waiting on the recovery
// does not wait for garbage to be freed. Until then the host holds one dead
// snapshot more; a restarted process's own memory does not depend on it (a
// recovery never allocates the size of a snapshot, except for entries with
// no RecoverTarget).

Result<LoadedState> MemoryTier::recover(std::int64_t min_step,
                                        std::span<const RecoverTarget> into) {
  stats_ = MemoryRecoveryStats{};
  const auto listing = std::chrono::steady_clock::now();
  // What this rank holds: [own steps..., replica-of-predecessor steps...].
  std::vector<std::int64_t> mine(2 * kReported, -1);
  int n_own = 0, n_rep = 0;
  for (std::int64_t s : snapshot_steps(rank_dir_)) {
    if (s < min_step) continue;
    std::string dir = rank_dir_ + "/" + step_dir_name(s);
    if (n_own < kReported && read_snapshot(dir, s, rank_, world_)) mine[n_own++] = s;
    if (world_ > 1 && n_rep < kReported && read_snapshot(dir, s, pred_, world_)) {
      mine[kReported + n_rep++] = s;
    }
  }
  std::vector<std::int64_t> all(mine.size() * world_, -1);
  if (world_ > 1) {
    KILN_RETURN_IF_ERROR(
        options_.comm->allgather(mine.data(), all.data(), mine.size(), DataType::kInt64)
            ->wait(options_.timeout));
  } else {
    all = mine;
  }
  stats_.phases.list_s = seconds_since(listing);
  auto own_of = [&](int r) { return all.data() + r * 2 * kReported; };
  auto replica_held_by = [&](int r) { return all.data() + r * 2 * kReported + kReported; };
  std::set<std::int64_t, std::greater<>> candidates(all.begin(), all.end());
  candidates.erase(-1);
  std::string failed;  // why steps every rank holds did not restore (the same on every rank)
  for (std::int64_t s : candidates) {
    // Rank r gets step s from its own memory or from rank r+1's replica.
    bool everyone = true;
    for (int r = 0; r < world_ && everyone; ++r) {
      everyone = has(own_of(r), s) || (world_ > 1 && has(replica_held_by((r + 1) % world_), s));
    }
    if (!everyone) continue;
    bool need_fetch = !has(own_of(rank_), s);
    bool pred_needs = world_ > 1 && !has(own_of(pred_), s);
    ++stats_.attempts;
    auto st = restore(s, need_fetch, pred_needs, into);
    // Every rank takes part in the agreement, also one whose stream failed:
    // a peer that did not see the failure must not be left waiting.
    const auto agreeing = std::chrono::steady_clock::now();
    Status agreed =
        world_ > 1 ? comm::agree(*options_.comm, st.status(), options_.timeout) : st.status();
    stats_.phases.agree_s = seconds_since(agreeing);
    if (agreed.is_ok()) {
      stats_.step = s;
      for (int r = 0; r < world_; ++r) stats_.from_replica += has(own_of(r), s) ? 0 : 1;
      return st;
    }
    if (!st.is_ok()) {
      log()->warn("in-memory checkpoint step {} not restored on rank {}: {}", s, rank_,
                  st.status().to_string());
    }
    for (const Status* e : {&st.status(), static_cast<const Status*>(&agreed)}) {
      if (e->code() == Code::kAborted || e->code() == Code::kDeadlineExceeded) {
        return *e;  // the communicator is unusable
      }
    }
    failed += fmt::format("; step {} failed: {}", s, agreed.to_string());
  }
  return not_found(
      fmt::format("no in-memory checkpoint step >= {} that all {} ranks hold under {}{}", min_step,
                  world_, options_.dir, failed));
}

// Note [A local restore beside the stream]: a rank that restores its own
// snapshot while it sends its predecessor's replica (the survivor beside a
// rank that lost its memory) has two copies of the same size to make. Done
// one after the other, the fetching rank waited for both. The local copy is
// made a round's bytes at a time right after each round of the stream is
// posted instead, while the peers work on that round. (A thread of its own
// for the local copy was slower on two cores: the stream's two sides spin
// on each other, and a third busy thread takes their core. docs/perf.md,
// issue 19, session 7.)

// Restores step `step` for this rank: sends the predecessor the replica it
// needs while fetching this rank's own snapshot from the successor, as
// decided identically on every rank; or reads its own from tmpfs.
Result<LoadedState> MemoryTier::restore(std::int64_t step, bool need_fetch, bool pred_needs,
                                        std::span<const RecoverTarget> into) {
  const int to = pred_, from = (rank_ + 1) % world_;
  const std::string dir = rank_dir_ + "/" + step_dir_name(step);
  const auto t = options_.timeout;
  auto* comm = options_.comm;
  const std::string where = fmt::format(
      "in-memory checkpoint step {} of rank {} ({}{})", step, rank_, shard_file_name(rank_),
      need_fetch ? ", the replica rank " + std::to_string(from) + " holds" : "");
  // What the predecessor needs: present (the feasibility check saw it); an
  // unreadable file sends a zero-length record, which the predecessor rejects.
  std::string send_json;
  std::optional<internal::MemorySource> send_bin;
  std::uint64_t send_size = 0;
  if (pred_needs) {
    auto j = read_file(dir + "/" + record_name(to));
    auto b = internal::map_existing(dir + "/" + shard_file_name(to));
    if (j.is_ok() && b.is_ok()) {
      send_json = std::move(*j);
      send_size = (*b)->size();
      send_bin.emplace(
          std::vector<internal::MemorySource::Region>{
              {(*b)->data(), static_cast<std::size_t>(send_size)}},
          std::move(*b));
    }
  }
  std::string recv_json;
  std::uint64_t recv_size = 0;
  RecoveryPhases& phases = stats_.phases;
  const auto heading = std::chrono::steady_clock::now();
  if (world_ > 1) {
    std::int64_t head_out[2] = {static_cast<std::int64_t>(send_json.size()),
                                static_cast<std::int64_t>(send_size)};
    std::int64_t head_in[2] = {0, 0};
    KILN_RETURN_IF_ERROR(
        comm->sendrecv(head_out, 2, to, head_in, 2, from, DataType::kInt64)->wait(t));
    recv_json.resize(static_cast<std::size_t>(head_in[0]));
    recv_size = static_cast<std::uint64_t>(head_in[1]);
    KILN_RETURN_IF_ERROR(comm->sendrecv(send_json.data(), send_json.size(), to, recv_json.data(),
                                        recv_json.size(), from, DataType::kUInt8)
                             ->wait(t));
  }
  // The record of what comes: fetched with the replica, or this rank's own.
  Result<ShardRecord> rec = data_loss(where + ": snapshot vanished");
  if (need_fetch) {
    rec = parse_record(recv_json, step, world_, where);
    if (rec.is_ok() && (rec->rank != rank_ || rec->bytes != recv_size)) {
      rec =
          data_loss(fmt::format("{}: replica is of rank {} with {} bytes, expected rank {} with {}",
                                where, rec->rank, recv_size, rank_, rec->bytes));
    }
  } else if (auto r = read_snapshot(dir, step, rank_, world_)) {
    rec = *r;
  }
  std::optional<internal::RestoreSink> sink;
  if (rec.is_ok()) sink.emplace(*rec, rank_, world_, into, where, options_.rows_as_saved);
  phases.headers_s = seconds_since(heading);
  // This rank's own snapshot, copied in the stream's waits (Note [A local
  // restore beside the stream]). A failure to open it is returned after the
  // stream, which the peers wait on.
  std::shared_ptr<internal::MappedFile> own_file;
  std::optional<internal::FileCopy> own_copy;
  if (rec.is_ok() && !need_fetch) {
    auto file = internal::map_existing(dir + "/" + rec->file);
    if (!file.is_ok()) {
      rec = file.status();
    } else if ((*file)->size() != rec->bytes) {
      rec = data_loss(fmt::format("{}: {} has {} bytes, its record {}", where, (*file)->path(),
                                  (*file)->size(), rec->bytes));
    } else {
      own_file = std::move(*file);
      own_copy.emplace(*own_file, *sink);
    }
  }
  internal::DiscardSink discard;
  if (world_ > 1) {
    Status local;
    internal::ChunkSink* in = nullptr;
    if (need_fetch) in = sink ? static_cast<internal::ChunkSink*>(&*sink) : &discard;
    internal::StreamTimes times;
    Status streamed = internal::stream_ring(*comm, to, send_bin ? &*send_bin : nullptr, send_size,
                                            from, in, need_fetch ? recv_size : 0, t, *bounce_,
                                            &local, own_copy ? &*own_copy : nullptr, &times);
    phases.stream_s = times.total_s;
    phases.stream_wait_s = times.wait_s;
    phases.stream_into_s = times.sink_s;
    phases.stream_source_s = times.source_s;
    phases.stream_own_copy_s = times.meanwhile_s;
    KILN_RETURN_IF_ERROR(streamed.with_context(where));
    KILN_RETURN_IF_ERROR(local.with_context(where));
  }
  if (!rec.is_ok()) return rec.status();
  if (need_fetch) stats_.fetched_bytes = recv_size;
  const auto finishing = std::chrono::steady_clock::now();
  if (own_copy) KILN_RETURN_IF_ERROR(own_copy->finish());
  LoadedState st;
  st.step = step;
  st.dir = dir;
  st.saved_world_size = world_;
  KILN_ASSIGN_OR_RETURN(st.entries, sink->finish());
  phases.finish_s = seconds_since(finishing);
  return st;
}

Status MemoryTier::clear() {
  KILN_RETURN_IF_ERROR(Fs::posix()->remove_tree(rank_dir_));
  internal::release_unlinked_mappings();
  // The last rank of the host to finish removes the job's directory too
  // (rmdir fails, harmlessly, while another rank's directory remains).
  ::rmdir(options_.dir.c_str());
  return Status::ok();
}

Result<LoadedState> recover_if_not_older(const std::string& root, MemoryTier& tier,
                                         const LoadOptions& options,
                                         std::span<const RecoverTarget> into) {
  std::int64_t newest_on_disk = -1;
  if (options.rank == 0) {
    auto steps = list_committed_steps(root);
    if (steps.is_ok() && !steps->empty()) newest_on_disk = steps->front();
  }
  if (options.world_size > 1) {
    KILN_RETURN_IF_ERROR(
        options.comm->broadcast(&newest_on_disk, 1, DataType::kInt64, 0)->wait(options.timeout));
  }
  return tier.recover(std::max<std::int64_t>(newest_on_disk, 0), into);
}

Result<LoadedState> recover_latest(const std::string& root, MemoryTier* tier,
                                   const LoadOptions& options, bool* from_memory) {
  if (from_memory != nullptr) *from_memory = false;
  if (tier != nullptr) {
    auto mem = recover_if_not_older(root, *tier, options);
    if (mem.is_ok()) {
      if (from_memory != nullptr) *from_memory = true;
      return mem;
    }
    if (mem.status().code() != Code::kNotFound) return mem.status();
    log()->info("{}; loading from {}", mem.status().message(), root);
  }
  return load_latest(root, options);
}

}  // namespace kiln::ckpt
