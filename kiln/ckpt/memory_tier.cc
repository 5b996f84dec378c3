#include "kiln/ckpt/memory_tier.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "kiln/base/file.h"
#include "kiln/base/fs.h"
#include "kiln/base/logging.h"
#include "kiln/ckpt/format.h"
#include "kiln/ckpt/fs.h"
#include "kiln/ckpt/internal/mapped_file.h"
#include "kiln/ckpt/retention.h"
#include "kiln/ckpt/verify.h"
#include "kiln/objstore/object_store.h"

namespace kiln::ckpt {
namespace {

using comm::DataType;
using internal::MappedFile;

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

// A snapshot's two files as sent to a peer: its record JSON and its mapped
// shard bytes; both empty when either cannot be read (the peer then gets a
// zero-length record and rejects or skips it).
struct SnapshotFiles {
  std::string json;
  std::optional<MappedFile> bin;
};

SnapshotFiles open_snapshot(const std::string& step_dir, int rank) {
  SnapshotFiles f;
  auto j = read_file(step_dir + "/" + record_name(rank));
  auto m = MappedFile::open_read(step_dir + "/" + shard_file_name(rank));
  if (j.is_ok() && m.is_ok()) {
    f.json = std::move(*j);
    f.bin.emplace(std::move(*m));
  }
  return f;
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

// Rank-wide 0/1 agreement: every rank learns whether all succeeded.
Result<bool> all_ok(comm::Communicator* comm, bool ok, std::chrono::milliseconds timeout) {
  std::int32_t v = ok ? 1 : 0;
  if (comm != nullptr && comm->size() > 1) {
    KILN_RETURN_IF_ERROR(
        comm->allreduce(&v, 1, DataType::kInt32, comm::ReduceOp::kMin)->wait(timeout));
  }
  return v == 1;
}

// The entry as load_step would return it for `rank` of `world`: tensors cut
// to the rank's even_rows (a replicated tensor to its part, like storage
// does), blobs as they are. DataLoss when this rank's snapshot lacks rows it
// needs (it saved another split): storage has them.
Result<LoadedEntry> as_loaded(const EntryRecord& e, std::vector<std::byte> bytes, int rank,
                              int world, const std::string& where) {
  if (!e.is_tensor) return LoadedEntry{e.name, false, {}, std::move(bytes)};
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
      rank_dir_(fmt::format("{}/rank-{}", options_.dir, rank_)) {}

Status MemoryTier::store(std::int64_t step, const std::vector<StagedEntry>& entries,
                         const std::byte* staging) {
  std::string dir = rank_dir_ + "/" + step_dir_name(step);
  Fs& fs = *Fs::posix();
  // A step stored again (a job restarted from an older step) replaces the old
  // copy.
  Status own = fs.remove_tree(dir);
  if (own.is_ok()) own = fs.make_dir(dir);
  if (own.is_ok()) {
    auto rec = write_shard(fs, dir, rank_, entries, staging, ShardWriteOptions{});
    own = rec.status();
    if (own.is_ok()) {
      own = write_file_atomic(fs, dir + "/" + record_name(rank_), record_json(step, world_, *rec));
    }
  }
  if (!own.is_ok()) {
    own = own.with_context(fmt::format("in-memory snapshot of step {} on rank {}", step, rank_));
  }
  Status ex = exchange(step, dir, own);
  if (!ex.is_ok()) return ex;
  if (!own.is_ok()) return own;
  // Older snapshots go only once this one is complete.
  for (std::int64_t s : snapshot_steps(rank_dir_)) {
    if (s != step) (void)fs.remove_tree(rank_dir_ + "/" + step_dir_name(s));
  }
  return Status::ok();
}

// Sends this rank's snapshot (record and shard bytes) to rank r+1 and
// receives rank r-1's. The sizes go first, so a rank whose own write failed
// sends nothing and its successor stores nothing, yet both finish.
Status MemoryTier::exchange(std::int64_t step, const std::string& dir, const Status& own) {
  if (world_ == 1) return Status::ok();
  const int to = (rank_ + 1) % world_, from = (rank_ + world_ - 1) % world_;
  SnapshotFiles my = own.is_ok() ? open_snapshot(dir, rank_) : SnapshotFiles{};
  std::string& my_json = my.json;
  std::optional<MappedFile>& my_bin = my.bin;
  std::int64_t mine[2] = {static_cast<std::int64_t>(my_json.size()),
                          static_cast<std::int64_t>(my_bin ? my_bin->size() : 0)};
  std::int64_t theirs[2] = {0, 0};
  const auto t = options_.timeout;
  auto* comm = options_.comm;
  KILN_RETURN_IF_ERROR(comm->sendrecv(mine, 2, to, theirs, 2, from, DataType::kInt64)->wait(t));
  std::string their_json(static_cast<std::size_t>(theirs[0]), '\0');
  KILN_RETURN_IF_ERROR(comm->sendrecv(my_json.data(), my_json.size(), to, their_json.data(),
                                      their_json.size(), from, DataType::kUInt8)
                           ->wait(t));
  // Received straight into the replica's pages; into scratch memory when the
  // file cannot be made (the bytes must still be drained).
  const auto their_size = static_cast<std::size_t>(theirs[1]);
  const std::string bin_path = dir + "/" + shard_file_name(from);
  auto target = MappedFile::create(bin_path, their_size);
  std::vector<std::byte> scratch;
  std::byte* into = nullptr;
  if (target.is_ok()) {
    into = target->data();
  } else {
    log()->warn("in-memory replica of rank {} step {} not kept: {}", from, step,
                target.status().to_string());
    scratch.resize(their_size);
    into = scratch.data();
  }
  KILN_RETURN_IF_ERROR(comm->sendrecv(my_bin ? my_bin->data() : nullptr,
                                      my_bin ? my_bin->size() : 0, to, into, their_size, from,
                                      DataType::kUInt8)
                           ->wait(t));
  if (target.is_ok() && theirs[0] > 0) {
    Status s = write_file_atomic(*Fs::posix(), dir + "/" + record_name(from), their_json);
    if (!s.is_ok())
      log()->warn("in-memory replica of rank {} step {}: {}", from, step, s.to_string());
  }
  return Status::ok();
}

Result<LoadedState> MemoryTier::recover(std::int64_t min_step) {
  stats_ = MemoryRecoveryStats{};
  const int pred = (rank_ + world_ - 1) % world_;
  // What this rank holds: [own steps..., replica-of-predecessor steps...].
  std::vector<std::int64_t> mine(2 * kReported, -1);
  int n_own = 0, n_rep = 0;
  for (std::int64_t s : snapshot_steps(rank_dir_)) {
    if (s < min_step) continue;
    std::string dir = rank_dir_ + "/" + step_dir_name(s);
    if (n_own < kReported && read_snapshot(dir, s, rank_, world_)) mine[n_own++] = s;
    if (world_ > 1 && n_rep < kReported && read_snapshot(dir, s, pred, world_)) {
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
  auto own_of = [&](int r) { return all.data() + r * 2 * kReported; };
  auto replica_held_by = [&](int r) { return all.data() + r * 2 * kReported + kReported; };
  std::set<std::int64_t, std::greater<>> candidates(all.begin(), all.end());
  candidates.erase(-1);
  for (std::int64_t s : candidates) {
    // Rank r gets step s from its own memory or from rank r+1's replica.
    bool everyone = true;
    for (int r = 0; r < world_ && everyone; ++r) {
      everyone = has(own_of(r), s) || (world_ > 1 && has(replica_held_by((r + 1) % world_), s));
    }
    if (!everyone) continue;
    bool need_fetch = !has(own_of(rank_), s);
    bool pred_needs = world_ > 1 && !has(own_of(pred), s);
    auto st = restore(s, need_fetch, pred_needs);
    KILN_ASSIGN_OR_RETURN(bool ok, all_ok(options_.comm, st.is_ok(), options_.timeout));
    if (ok) {
      stats_.step = s;
      for (int r = 0; r < world_; ++r) stats_.from_replica += has(own_of(r), s) ? 0 : 1;
      return st;
    }
    if (!st.is_ok()) {
      log()->warn("in-memory checkpoint step {} not restored on rank {}: {}", s, rank_,
                  st.status().to_string());
    }
    if (st.status().code() == Code::kAborted || st.status().code() == Code::kDeadlineExceeded) {
      return st.status();  // the communicator is unusable
    }
  }
  return not_found(fmt::format("no in-memory checkpoint step >= {} that all {} ranks hold under {}",
                               min_step, world_, options_.dir));
}

// Restores step `step` for this rank; first sends the predecessor the
// replica it needs and fetches this rank's own snapshot from the successor,
// as decided identically on every rank.
Result<LoadedState> MemoryTier::restore(std::int64_t step, bool need_fetch, bool pred_needs) {
  const int to = (rank_ + world_ - 1) % world_, from = (rank_ + 1) % world_;
  const std::string dir = rank_dir_ + "/" + step_dir_name(step);
  const auto t = options_.timeout;
  auto* comm = options_.comm;
  // Present: the feasibility check saw it. An unreadable file sends a
  // zero-length record, which the predecessor rejects.
  SnapshotFiles out = pred_needs ? open_snapshot(dir, to) : SnapshotFiles{};
  std::string& send_json = out.json;
  std::optional<MappedFile>& send_bin = out.bin;
  std::int64_t head_out[2] = {static_cast<std::int64_t>(send_json.size()),
                              static_cast<std::int64_t>(send_bin ? send_bin->size() : 0)};
  std::int64_t head_in[2] = {0, 0};
  std::string recv_json;
  std::vector<std::byte> recv_bin;
  // Each direction is its own message stream; post both before waiting so a
  // rank that both sends and fetches (two ranks) cannot deadlock.
  auto step_pair = [&](const void* out, std::size_t out_n, void* in, std::size_t in_n,
                       DataType dt) -> Status {
    comm::WorkPtr s, r;
    if (pred_needs) s = comm->send(out, out_n, dt, to);
    if (need_fetch) r = comm->recv(in, in_n, dt, from);
    if (s) KILN_RETURN_IF_ERROR(s->wait(t));
    if (r) KILN_RETURN_IF_ERROR(r->wait(t));
    return Status::ok();
  };
  KILN_RETURN_IF_ERROR(step_pair(head_out, 2, head_in, 2, DataType::kInt64));
  recv_json.resize(static_cast<std::size_t>(head_in[0]));
  recv_bin.resize(static_cast<std::size_t>(head_in[1]));
  KILN_RETURN_IF_ERROR(step_pair(send_json.data(), send_json.size(), recv_json.data(),
                                 recv_json.size(), DataType::kUInt8));
  KILN_RETURN_IF_ERROR(step_pair(send_bin ? send_bin->data() : nullptr,
                                 send_bin ? send_bin->size() : 0, recv_bin.data(), recv_bin.size(),
                                 DataType::kUInt8));

  LoadedState st;
  st.step = step;
  st.dir = dir;
  st.saved_world_size = world_;
  const std::string where =
      fmt::format("in-memory checkpoint step {} of rank {}{}", step, rank_,
                  need_fetch ? " (replica from rank " + std::to_string(from) + ")" : "");
  ShardRecord rec;
  if (need_fetch) {
    KILN_ASSIGN_OR_RETURN(rec, parse_record(recv_json, step, world_, where));
    if (rec.rank != rank_ || rec.bytes != recv_bin.size()) {
      return data_loss(
          fmt::format("{}: replica is of rank {} with {} bytes, expected rank {} with {}", where,
                      rec.rank, recv_bin.size(), rank_, rec.bytes));
    }
    stats_.fetched_bytes = recv_bin.size();
  } else {
    auto r = read_snapshot(dir, step, rank_, world_);
    if (!r) return data_loss(where + ": snapshot vanished");
    rec = *r;
  }
  // One copy out of the snapshot's pages (received, or this rank's own on
  // tmpfs), checksummed, then cut to this rank's rows.
  std::optional<MappedFile> own_bin;
  const std::byte* base = recv_bin.data();
  std::size_t size = recv_bin.size();
  if (!need_fetch) {
    KILN_ASSIGN_OR_RETURN(auto m, MappedFile::open_read(dir + "/" + rec.file));
    own_bin.emplace(std::move(m));
    base = own_bin->data();
    size = own_bin->size();
  }
  for (const auto& e : rec.entries) {
    if (e.offset + e.stored_bytes > size) {
      return data_loss(fmt::format("{}: entry '{}' lies past the snapshot's end", where, e.name));
    }
    std::vector<std::byte> stored(base + e.offset, base + e.offset + e.stored_bytes);
    KILN_ASSIGN_OR_RETURN(auto bytes, decode_entry(e, std::move(stored), where));
    KILN_ASSIGN_OR_RETURN(auto entry, as_loaded(e, std::move(bytes), rank_, world_, where));
    st.entries.push_back(std::move(entry));
  }
  return st;
}

Status MemoryTier::clear() {
  KILN_RETURN_IF_ERROR(Fs::posix()->remove_tree(rank_dir_));
  // The last rank of the host to finish removes the job's directory too
  // (rmdir fails, harmlessly, while another rank's directory remains).
  ::rmdir(options_.dir.c_str());
  return Status::ok();
}

Result<LoadedState> recover_if_not_older(const std::string& root, MemoryTier& tier,
                                         const LoadOptions& options) {
  std::int64_t newest_on_disk = -1;
  if (options.rank == 0) {
    auto steps = list_committed_steps(root);
    if (steps.is_ok() && !steps->empty()) newest_on_disk = steps->front();
  }
  if (options.world_size > 1) {
    KILN_RETURN_IF_ERROR(
        options.comm->broadcast(&newest_on_disk, 1, DataType::kInt64, 0)->wait(options.timeout));
  }
  return tier.recover(std::max<std::int64_t>(newest_on_disk, 0));
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
