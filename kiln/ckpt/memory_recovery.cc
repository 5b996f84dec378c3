// MemoryTier's recovery: which snapshots every rank holds, agreed on, and
// each rank's state restored from its own snapshot or streamed from its
// buddy's replica.
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
using internal::parse_record;
using internal::read_snapshot;
using internal::record_name;
using internal::snapshot_steps;

// Snapshots of one rank that recovery considers: the newest few, so a step
// interrupted mid-exchange still leaves the one before it on the peers that
// finished it.
constexpr int kReported = 2;

bool has(const std::int64_t* steps, std::int64_t s) {
  return std::find(steps, steps + kReported, s) != steps + kReported;
}

}  // namespace

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
