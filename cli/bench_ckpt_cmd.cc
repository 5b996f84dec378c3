// `kiln bench ckpt`: what a checkpoint costs training, against the same
// run's baselines. Typed on its own it starts --ranks local ranks (default
// 2); under a launcher it is one rank:
//   kiln launch -n 4 -- kiln bench ckpt --bytes 1G --root /data/bench-ckpt --json
//
//   stall_vs_memcpy  save_async's stall (steady state: staging reused) over a
//                    plain memcpy of this rank's bytes into a touched buffer (target ≤ 1.5)
//   write_vs_raw     background shard write throughput (write + fsync) over a raw
//                    sequential write + fsync of the same bytes, run before each
//                    timed save (target ≥ 0.8)
//   load_mb_s        load_latest of every rank's slice, page cache dropped for the
//                    shard files first (posix_fadvise), all ranks' MB over the slowest rank
//   disk_recovery_s  that load's wall time (manifest, reads, checksums, re-slice)
//   inmem_store_s    MemoryTier::store of the same state: tmpfs snapshot + ring
//                    replica, steady state (median of 3 after two that recycle
//                    files; target ≤ 2 × memcpy_s). The state is staged in the
//                    snapshot file first, as the checkpointer's save_async does
//                    with a tier (MemoryTier::stage); that copy is the stall,
//                    inmem_stage_s (target as stall_vs_memcpy, ≤ 1.5 ×);
//                    inmem_store_rounds: each timed store with a memcpy of
//                    the same bytes right before it
//   inmem_recovery_s ranks restore from their own in-memory snapshots into
//                    their (touched) memory (target ≤ 3 × memcpy_s)
//   inmem_buddy_recovery_s  the same after rank 1's memory is lost: it fetches
//                    its snapshot from the replica rank 2 (mod n) holds (≤ 5 ×)
//                    Both are the median of 3 recoveries, each of a step
//                    stored again after the last (a recovery each, not the
//                    best); inmem_*recovery_rounds: each one's time and every
//                    rank's phases (ckpt::RecoveryPhases)
//   inmem_restart_recovery_s  a rank process SIGKILLed and restarted recovers
//                    from its buddy's memory: from the kill to both recovered,
//                    process start and allocation included (bench_ckpt_restart.h;
//                    target ≤ 1 s + 5 × memcpy_s)
//   s3_write_vs_raw_put  (--s3) a checkpoint streamed to a local s3rver
//                    (shard upload + commit) vs raw PUTs of the same bytes in
//                    part-sized objects at the same parallelism (target ≥ 0.8);
//                    s3_rounds: each round's raw PUTs, upload + commit, commit;
//                    s3_breakdown: where each round's seconds went, per rank
//                    (Note [Where an upload's time goes], bench_ckpt_s3_breakdown.h);
//                    s3_object_layout: how the shards were stored (--object-layout
//                    chunks|multipart; Note [Shards as chunk objects], ckpt/remote.h)
// Times are the slowest rank's. Each timed save is preceded by its own memcpy
// and raw-write baselines; the ratios are the medians of the per-save ratios,
// so load from other processes cancels out as far as it can.
// Every load is checked byte for byte against what was saved (always on:
// a benchmark of a recovery that restores other bytes means nothing).
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <utility>
#include <vector>

#include "cli/bench_ckpt_restart.h"
#include "cli/bench_ckpt_s3.h"
#include "cli/command.h"
#include "cli/local_ranks.h"
#include "kiln/base/deadline.h"
#include "kiln/base/fd.h"
#include "kiln/base/units.h"
#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/format.h"
#include "kiln/ckpt/load.h"
#include "kiln/ckpt/memory_tier.h"
#include "kiln/comm/process_group.h"

namespace kiln::cli {
namespace {

using comm::Communicator;
using comm::DataType;

struct CkptBenchArgs {
  std::string bytes = "1G";  // whole state, all ranks together
  std::string root = "/tmp/kiln-bench-ckpt";
  int saves = 4;  // the first fills the staging pool; the rest are timed
  bool zstd = false;
  bool keep = false;  // leave the last checkpoint for `kiln ckpt` to look at
  bool json = false;
  int ranks = 2;  // when not under a launcher
  // Test-only (hidden): flips a byte of the last checkpoint's shard files
  // before the timed load, so a test can prove a corrupt checkpoint fails.
  bool inject_corruption = false;
  bool s3 = false;  // also measure checkpoints to a local s3rver
  std::string object_layout = "chunks";  // of the --s3 checkpoint (ckpt::ObjectLayout)
  // The restart measurement's child process (hidden; bench_ckpt_restart.h).
  std::string restart_child;
  RestartBenchSpec restart;
  // A/B of the restart part alone (hidden): these --restart-memory modes,
  // each run --restart-reps times, interleaved; nothing else is measured.
  std::vector<std::string> restart_ab;
  int restart_reps = 3;
  bool s3_alone = false;  // (hidden) only the --s3 part
  // (hidden) the raw PUTs overwrite the same objects every round, as before
  // session 16 (Note [The raw PUTs' server state]); A/Bs only.
  bool s3_raw_overwrite = false;
  bool s3_raw_after = false;  // (hidden) the raw PUTs after the save in each round; A/Bs only
};

Result<double> slowest(Communicator& c, double v) {
  KILN_RETURN_IF_ERROR(c.allreduce(&v, 1, DataType::kFloat64, comm::ReduceOp::kMax)->wait());
  return v;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// A raw sequential write + fsync of `n` bytes in 8 MiB writes: the disk's
// speed for this access pattern, measured in the same run.
Result<double> raw_write_seconds(const std::string& path, const std::vector<char>& buf) {
  auto t0 = std::chrono::steady_clock::now();
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid()) return errno_status("bench ckpt: create " + path, errno);
  for (std::size_t off = 0; off < buf.size();) {
    ssize_t w =
        ::write(fd.get(), buf.data() + off, std::min<std::size_t>(8 << 20, buf.size() - off));
    if (w < 0) return errno_status("bench ckpt: write " + path, errno);
    off += static_cast<std::size_t>(w);
  }
  if (::fsync(fd.get()) != 0) return errno_status("bench ckpt: fsync " + path, errno);
  if (fd.close() != 0) return errno_status("bench ckpt: close " + path, errno);
  double s = seconds_since(t0);
  ::unlink(path.c_str());
  return s;
}

// Flips one byte in the middle of every shard file of `step_dir`.
Status corrupt_shards(const std::string& step_dir) {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(step_dir, ec)) {
    if (e.path().extension() != ".bin") continue;
    const std::string path = e.path().string();
    Fd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
    if (!fd.valid()) return errno_status("bench ckpt: open " + path, errno);
    off_t middle = ::lseek(fd.get(), 0, SEEK_END) / 2;
    char b = 0;
    bool ok = ::pread(fd.get(), &b, 1, middle) == 1;
    b = static_cast<char>(b ^ 0x5a);
    ok = ok && ::pwrite(fd.get(), &b, 1, middle) == 1;
    if (!ok) return errno_status("bench ckpt: flip a byte of " + path, errno);
  }
  if (ec) return internal_error(fmt::format("bench ckpt: list {}: {}", step_dir, ec.message()));
  return Status::ok();
}

// Evicts the (clean, fsynced) pages of every file under `dir` from the page cache.
void drop_cache(const std::string& dir) {
  std::error_code ec;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir, ec)) {
    Fd fd(::open(e.path().c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.valid()) ::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_DONTNEED);
  }
}

// One recovery's phases (ckpt::RecoveryPhases), per rank, as JSON.
using RankPhases = nlohmann::json;

// Each phase's key in the JSON, in the order the ranks exchange them.
constexpr std::pair<const char*, double ckpt::RecoveryPhases::*> kPhaseKeys[] = {
    {"list", &ckpt::RecoveryPhases::list_s},
    {"headers", &ckpt::RecoveryPhases::headers_s},
    {"stream", &ckpt::RecoveryPhases::stream_s},
    {"stream_wait", &ckpt::RecoveryPhases::stream_wait_s},
    {"stream_checksum_into_place", &ckpt::RecoveryPhases::stream_into_s},
    {"stream_send_source", &ckpt::RecoveryPhases::stream_source_s},
    {"stream_own_copy", &ckpt::RecoveryPhases::stream_own_copy_s},
    {"finish", &ckpt::RecoveryPhases::finish_s},
    {"agree", &ckpt::RecoveryPhases::agree_s},
};

Result<RankPhases> every_ranks_phases(Communicator& c, const ckpt::RecoveryPhases& p) {
  std::vector<double> mine;
  for (const auto& [key, field] : kPhaseKeys) mine.push_back(p.*field);
  std::vector<double> all(mine.size() * static_cast<std::size_t>(c.size()));
  KILN_RETURN_IF_ERROR(
      c.allgather(mine.data(), all.data(), mine.size(), DataType::kFloat64)->wait());
  RankPhases out = nlohmann::json::array();
  for (int rank = 0; rank < c.size(); ++rank) {
    const double* q = all.data() + static_cast<std::size_t>(rank) * mine.size();
    RankPhases phases = nlohmann::json::object();
    for (std::size_t i = 0; i < mine.size(); ++i) phases[kPhaseKeys[i].first] = q[i];
    out.push_back(std::move(phases));
  }
  return out;
}

struct MemoryTierTimes {
  // recovery_s and buddy_s: the medians of kRecoveryRounds recoveries each.
  double stage_s = 0, store_s = 0, recovery_s = 0, buddy_s = 0;
  std::vector<double> recovery_each_s, buddy_each_s;
  std::vector<RankPhases> recovery_phases, buddy_phases;  // per round
  // Each timed store's, with a memcpy of the same bytes right before it.
  std::vector<double> memcpy_each_s, store_each_s;
  bool staged = false, replica_on_host = false;  // how the timed stores went (MemoryStoreStats)
};

// Stores before the timed ones: the first two allocate the snapshot files,
// later ones write over the retired generation's (Note [Recycled snapshot
// files]), as every save of a training run after its second does.
constexpr int kWarmStores = 2, kTimedStores = 3;
// Recoveries of each kind (own snapshots, buddy's replica), each a step
// stored again after the last: the keys are their medians.
constexpr int kRecoveryRounds = 3;

// The in-memory tier on the same state: store it, recover it into this
// rank's (touched) scratch memory as ranks restarting in place would, then
// again with rank 1's memory gone (its buddy's replica comes over the
// communicator); kRecoveryRounds times, a newer step stored before each
// round. Checks every recovered byte; clears the tier.
Result<MemoryTierTimes> measure_memory_tier(Communicator& c, Communicator& ckpt_comm,
                                            const std::string& root, ckpt::RowRange mine,
                                            std::int64_t rows, std::int64_t cols,
                                            const std::vector<char>& state,
                                            std::vector<char>& scratch, std::size_t my_bytes) {
  const int r = c.rank(), n = c.size();
  std::string dir = ckpt::default_memory_dir(root) + "-bench";
  KILN_ASSIGN_OR_RETURN(auto tier, ckpt::MemoryTier::open({.dir = dir, .comm = &ckpt_comm}));
  std::vector<ckpt::StagedEntry> entries{
      {"weights", true, {DataType::kFloat32, {rows, cols}, mine.offset, mine.count}, 0, my_bytes}};
  MemoryTierTimes t;
  std::vector<double> stage_s, store_s;
  const std::int64_t first = 1, step = kWarmStores + kTimedStores;
  for (std::int64_t s = first; s <= step; ++s) {
    KILN_RETURN_IF_ERROR(c.barrier()->wait());
    auto t0 = std::chrono::steady_clock::now();
    std::memcpy(scratch.data(), state.data(), my_bytes);
    KILN_ASSIGN_OR_RETURN(double copy_s, slowest(c, seconds_since(t0)));
    // Staged in the snapshot file as the checkpointer's save_async does.
    KILN_RETURN_IF_ERROR(c.barrier()->wait());
    t0 = std::chrono::steady_clock::now();
    KILN_ASSIGN_OR_RETURN(std::byte * staged, tier->stage(my_bytes));
    std::memcpy(staged, state.data(), my_bytes);
    KILN_ASSIGN_OR_RETURN(double staging, slowest(c, seconds_since(t0)));
    KILN_RETURN_IF_ERROR(c.barrier()->wait());
    t0 = std::chrono::steady_clock::now();
    KILN_RETURN_IF_ERROR(tier->store(s, entries, staged));
    KILN_ASSIGN_OR_RETURN(double took, slowest(c, seconds_since(t0)));
    if (s >= first + kWarmStores) {
      stage_s.push_back(staging);
      store_s.push_back(took);
      t.memcpy_each_s.push_back(copy_s);
      t.staged = tier->last_store().staged;
      t.replica_on_host = tier->last_store().replica_on_host;
    }
  }
  t.stage_s = median(stage_s);
  t.store_s = median(store_s);
  t.store_each_s = store_s;
  ckpt::RecoverTarget into{"weights", reinterpret_cast<std::byte*>(scratch.data()), my_bytes};
  for (int round = 0; round < kRecoveryRounds; ++round) {
    const std::int64_t at = step + round;
    if (round > 0) {
      // Rank 1 lost its memory in the last round: as a restarted process it
      // opens a tier again, and every rank stores a newer step (not timed).
      if (r == 1) {
        KILN_ASSIGN_OR_RETURN(tier, ckpt::MemoryTier::open({.dir = dir, .comm = &ckpt_comm}));
      }
      KILN_ASSIGN_OR_RETURN(std::byte * staged, tier->stage(my_bytes));
      std::memcpy(staged, state.data(), my_bytes);
      KILN_RETURN_IF_ERROR(tier->store(at, entries, staged));
    }
    for (int lose = 0; lose < (n > 1 ? 2 : 1); ++lose) {
      // Rank 1 loses its memory as a dead process does: its files deleted and
      // unmapped before the clock starts (a process's exit is not its
      // successor's recovery). The survivor's mapping of the lost file is
      // dropped by its next store, not inside recover().
      if (lose == 1 && r == 1) KILN_RETURN_IF_ERROR(tier->clear());
      std::memset(scratch.data(), 0, my_bytes);
      KILN_RETURN_IF_ERROR(c.barrier()->wait());
      auto t0 = std::chrono::steady_clock::now();
      KILN_ASSIGN_OR_RETURN(auto got, tier->recover(at, {&into, 1}));
      KILN_ASSIGN_OR_RETURN(double s, slowest(c, seconds_since(t0)));
      KILN_ASSIGN_OR_RETURN(auto phases, every_ranks_phases(c, tier->last_recovery().phases));
      (lose == 0 ? t.recovery_each_s : t.buddy_each_s).push_back(s);
      (lose == 0 ? t.recovery_phases : t.buddy_phases).push_back(std::move(phases));
      const ckpt::LoadedEntry* w = got.find("weights");
      int bad = (w == nullptr || !w->in_place ||
                 std::memcmp(scratch.data(), state.data(), my_bytes) != 0 ||
                 tier->last_recovery().step != at || tier->last_recovery().from_replica != lose)
                    ? 1
                    : 0;
      KILN_RETURN_IF_ERROR(c.allreduce(&bad, 1, DataType::kInt32, comm::ReduceOp::kMax)->wait());
      if (bad) return internal_error("bench ckpt: the in-memory tier restored other bytes");
    }
  }
  t.recovery_s = median(t.recovery_each_s);
  if (n > 1) t.buddy_s = median(t.buddy_each_s);
  KILN_RETURN_IF_ERROR(tier->clear());
  KILN_RETURN_IF_ERROR(c.barrier()->wait());
  if (r == 0) std::filesystem::remove_all(dir);
  return t;
}

nlohmann::json restart_json(const RestartTimes& t) {
  return {
      {"total_s", t.total_s},
      {"phases_s",
       {{"start", t.start_s}, {"join", t.join_s}, {"alloc", t.alloc_s}, {"recover", t.recover_s}}},
      {"faults",
       {{"alloc", t.alloc_faults},
        {"recover", t.recover_faults},
        {"host_thp_fallbacks", t.thp_fallbacks},
        {"host_compaction_stalls", t.compaction_stalls},
        {"host_reported_mib", t.reported_mib}}}};
}

// --restart-ab: the restart part alone under several memory modes (rank 0
// measures; the other ranks wait at the barrier), with a memcpy baseline
// before each run. Prints one JSON line per run.
Status restart_ab(comm::ProcessGroup& pg, const CkptBenchArgs& a, const std::string& root,
                  std::int64_t rows, std::int64_t cols, const std::vector<char>& state,
                  std::vector<char>& copy) {
  Communicator& c = pg.comm();
  for (const auto& mode : a.restart_ab) KILN_RETURN_IF_ERROR(check_restart_memory_mode(mode));
  std::error_code ec;
  if (c.rank() == 0 && !std::filesystem::create_directories(root, ec) && ec) {
    return errno_status("bench ckpt: create " + root, ec.value());
  }
  for (int rep = 0; rep < a.restart_reps; ++rep) {
    int run = 0;
    for (const auto& mode : a.restart_ab) {
      if (c.rank() == 0) {
        auto t0 = std::chrono::steady_clock::now();
        std::memcpy(copy.data(), state.data(), state.size());
        const double memcpy_s = seconds_since(t0);
        std::memset(copy.data(), 0, copy.size());
        RestartBenchSpec spec{
            ckpt::default_memory_dir(root) + "-bench-restart",  rows, cols, 1, mode,
            rep * static_cast<int>(a.restart_ab.size()) + run++};
        auto got = measure_restart_recovery(pg, spec, state, copy, root);
        if (!got.is_ok()) {
          c.abort(got.status());
          return got.status();
        }
        nlohmann::json doc = restart_json(*got);
        doc["mode"] = mode;
        doc["rep"] = rep;
        doc["memcpy_s"] = memcpy_s;
        std::printf("%s\n", doc.dump().c_str());
        std::fflush(stdout);
      }
      KILN_RETURN_IF_ERROR(c.barrier()->wait());
    }
  }
  return Status::ok();
}

void add_s3_keys(nlohmann::json& doc, const std::optional<S3CkptTimes>& s3,
                 const std::string& skipped, const std::string& layout) {
  doc["s3_object_layout"] = layout;
  if (s3) {
    doc["s3_raw_put_s"] = s3->raw_put_s;
    doc["s3_write_s"] = s3->write_s;
    doc["s3_write_vs_raw_put"] = s3->ratio;
    doc["s3_rounds"] = {{"raw_put_s", s3->raw_put_each_s},
                        {"write_s", s3->write_each_s},
                        {"commit_s", s3->commit_each_s}};
    doc["s3_breakdown"] = s3->breakdown;
  } else {
    doc["s3_write_vs_raw_put"] = nullptr;
    doc["s3_skipped"] = skipped;
  }
}

RawPutKeys raw_keys(const CkptBenchArgs& a) {
  return a.s3_raw_overwrite ? RawPutKeys::kOverwrite : RawPutKeys::kFresh;
}

// --s3-alone (hidden): the s3 part and nothing else, for A/Bs of the upload.
Status s3_alone(Communicator& c, const CkptBenchArgs& a, const std::vector<char>& state,
                std::int64_t rows, std::int64_t cols) {
  std::string skipped;
  KILN_ASSIGN_OR_RETURN(auto layout, ckpt::parse_object_layout(a.object_layout));
  KILN_ASSIGN_OR_RETURN(auto s3, measure_s3_checkpoint(c, state, rows, cols, a.saves - 1, layout,
                                                       raw_keys(a), a.s3_raw_after, &skipped));
  if (c.rank() != 0) return Status::ok();
  nlohmann::json doc{{"world_size", c.size()}, {"bytes_per_rank", state.size()}};
  add_s3_keys(doc, s3, skipped, a.object_layout);
  std::printf("%s\n", a.json ? doc.dump().c_str() : doc.dump(2).c_str());
  return Status::ok();
}

Status bench_ckpt(const CkptBenchArgs& a) {
  KILN_ASSIGN_OR_RETURN(std::uint64_t total, parse_bytes(a.bytes));
  if (a.saves < 2) return invalid_argument("bench ckpt: --saves must be at least 2");
  KILN_RETURN_IF_ERROR(ckpt::parse_object_layout(a.object_layout).status());
  if (!a.restart_child.empty()) return run_restart_child(a.restart_child, a.restart);
  KILN_RETURN_IF_ERROR(check_restart_memory_mode(a.restart.memory));
  if (auto spawned = run_as_local_ranks_unless_launched(a.ranks, "kiln bench ckpt"))
    return *spawned;
  KILN_ASSIGN_OR_RETURN(auto pg, comm::ProcessGroup::from_env());
  Communicator& c = pg->comm();
  const int n = c.size(), r = c.rank();
  // A [rows, 1024] float32 tensor sharded by rows, plus a small per-rank blob.
  const std::int64_t cols = 1024, rows = std::max<std::int64_t>(n, total / (cols * 4));
  ckpt::RowRange mine = ckpt::even_rows(rows, r, n);
  const std::size_t my_bytes = static_cast<std::size_t>(mine.count * cols * 4);
  std::vector<char> state(my_bytes), copy(my_bytes);
  fill_bench_state(state, r);
  std::memset(copy.data(), 1, copy.size());
  std::string rng = fmt::format("rng state of rank {}", r);

  std::string root = a.root;
  if (r == 0) {
    std::error_code ec;
    std::filesystem::remove_all(root, ec);
  }
  KILN_RETURN_IF_ERROR(c.barrier()->wait());
  if (!a.restart_ab.empty()) return restart_ab(*pg, a, root, mine.count, cols, state, copy);
  if (a.s3_alone) return s3_alone(c, a, state, rows, cols);

  // The checkpointer gets a communicator of its own (see checkpointer.h).
  KILN_ASSIGN_OR_RETURN(auto ckpt_comm, c.split(0, r));
  KILN_ASSIGN_OR_RETURN(
      auto ck, ckpt::Checkpointer::create(
                   {.root = root,
                    .comm = ckpt_comm.get(),
                    .retention = {.keep_last = 1},
                    .compression = a.zstd ? ckpt::Compression::kZstd : ckpt::Compression::kNone}));
  std::vector<double> stall_s, write_s, commit_s, raw_s, memcpy_s, stall_ratio, write_ratio;
  for (int step = 0; step < a.saves; ++step) {
    if (step > 0) {
      // The baselines run right before each timed save, so both see the same
      // machine (other load, page cache, disk state): a plain memcpy into a
      // touched buffer, and a raw sequential write + fsync of the same bytes.
      KILN_RETURN_IF_ERROR(c.barrier()->wait());
      auto t0 = std::chrono::steady_clock::now();
      std::memcpy(copy.data(), state.data(), my_bytes);
      KILN_ASSIGN_OR_RETURN(double m, slowest(c, seconds_since(t0)));
      memcpy_s.push_back(m);
      KILN_RETURN_IF_ERROR(c.barrier()->wait());
      KILN_ASSIGN_OR_RETURN(double raw_mine,
                            raw_write_seconds(fmt::format("{}/raw-{}.bin", root, r), state));
      KILN_ASSIGN_OR_RETURN(double raw_slowest, slowest(c, raw_mine));
      raw_s.push_back(raw_slowest);
    }
    ckpt::StateView view;
    KILN_RETURN_IF_ERROR(view.add_tensor("weights", DataType::kFloat32, {rows, cols}, mine.offset,
                                         mine.count, state.data()));
    KILN_RETURN_IF_ERROR(view.add_blob("rng", rng.data(), rng.size()));
    KILN_RETURN_IF_ERROR(c.barrier()->wait());
    auto t0 = std::chrono::steady_clock::now();
    KILN_RETURN_IF_ERROR(ck->save_async(view, step).status());
    double stall = seconds_since(t0);
    KILN_RETURN_IF_ERROR(ck->wait(Deadline::after_seconds(600)));
    auto st = ck->last_stats();
    if (step == 0) continue;  // the staging pool was allocated and faulted in here
    KILN_ASSIGN_OR_RETURN(double s1, slowest(c, stall));
    KILN_ASSIGN_OR_RETURN(double s2, slowest(c, st.write_s));
    KILN_ASSIGN_OR_RETURN(double s3, slowest(c, st.commit_s));
    stall_s.push_back(s1);
    write_s.push_back(s2);
    commit_s.push_back(s3);
    stall_ratio.push_back(s1 / memcpy_s.back());
    write_ratio.push_back(raw_s.back() / s2);
  }
  const std::int64_t last_step = a.saves - 1;

  // Recovery from disk, cold page cache.
  if (r == 0 && a.inject_corruption) {
    KILN_RETURN_IF_ERROR(corrupt_shards(fmt::format("{}/step-{}", root, last_step)));
  }
  if (r == 0) drop_cache(root);
  KILN_RETURN_IF_ERROR(c.barrier()->wait());
  auto t0 = std::chrono::steady_clock::now();
  KILN_ASSIGN_OR_RETURN(
      auto loaded, ckpt::load_latest(root, {r, n, ckpt_comm.get(), std::chrono::seconds(600)}));
  KILN_ASSIGN_OR_RETURN(double load_t, slowest(c, seconds_since(t0)));
  const ckpt::LoadedEntry* w = loaded.find("weights");
  int bad = (loaded.step != last_step || w == nullptr || w->data.size() != my_bytes ||
             std::memcmp(w->data.data(), state.data(), my_bytes) != 0)
                ? 1
                : 0;
  KILN_RETURN_IF_ERROR(c.allreduce(&bad, 1, DataType::kInt32, comm::ReduceOp::kMax)->wait());
  if (bad) return internal_error("bench ckpt: the loaded state differs from the saved one");

  KILN_ASSIGN_OR_RETURN(
      auto mem, measure_memory_tier(c, *ckpt_comm, root, mine, rows, cols, state, copy, my_bytes));

  // A rank SIGKILLed and restarted, recovering from its buddy's memory: rank
  // 0 and a child process of its own (the other ranks wait).
  RestartTimes restart;
  if (r == 0) {
    RestartBenchSpec spec{ckpt::default_memory_dir(root) + "-bench-restart", mine.count, cols,
                          last_step, a.restart.memory};
    std::memset(copy.data(), 0, copy.size());  // so only a real recovery matches
    auto got = measure_restart_recovery(*pg, spec, state, copy, root);
    if (!got.is_ok()) {
      c.abort(got.status());  // the waiting ranks learn at once
      return got.status();
    }
    restart = *got;
  }
  KILN_RETURN_IF_ERROR(c.barrier()->wait());

  std::optional<S3CkptTimes> s3;
  std::string s3_skipped = "--s3 not given";
  if (a.s3) {
    KILN_ASSIGN_OR_RETURN(auto layout, ckpt::parse_object_layout(a.object_layout));
    KILN_ASSIGN_OR_RETURN(s3, measure_s3_checkpoint(c, state, rows, cols, a.saves - 1, layout,
                                                    raw_keys(a), a.s3_raw_after, &s3_skipped));
  }

  double stall = median(stall_s), write = median(write_s);
  const double mb = static_cast<double>(rows * cols * 4) / 1e6;
  if (r == 0) {
    nlohmann::json doc{
        {"world_size", n},
        {"state_bytes", rows * cols * 4},
        {"bytes_per_rank", my_bytes},
        {"compression", a.zstd ? "zstd" : "none"},
        {"root", root},
        {"timed_saves", a.saves - 1},
        {"memcpy_s", median(memcpy_s)},
        {"stall_s", stall},
        {"stall_vs_memcpy", median(stall_ratio)},
        {"raw_write_s", median(raw_s)},
        {"write_s", write},
        {"write_vs_raw", median(write_ratio)},
        {"commit_s", median(commit_s)},
        {"load_mb_s", mb / load_t},
        {"disk_recovery_s", load_t},
        {"inmem_stage_s", mem.stage_s},
        {"inmem_stage_vs_memcpy", mem.stage_s / median(memcpy_s)},
        {"inmem_store_s", mem.store_s},
        {"inmem_store_staged", mem.staged},
        {"inmem_replica_on_host", mem.replica_on_host},
        {"inmem_store_vs_memcpy", mem.store_s / median(memcpy_s)},
        {"inmem_store_rounds", {{"memcpy_s", mem.memcpy_each_s}, {"store_s", mem.store_each_s}}},
        {"inmem_recovery_s", mem.recovery_s},
        {"inmem_recovery_vs_memcpy", mem.recovery_s / median(memcpy_s)},
        {"inmem_recovery_rounds", {{"s", mem.recovery_each_s}, {"phases_s", mem.recovery_phases}}},
        {"inmem_buddy_recovery_s", n > 1 ? nlohmann::json(mem.buddy_s) : nullptr},
        {"inmem_buddy_vs_memcpy", n > 1 ? nlohmann::json(mem.buddy_s / median(memcpy_s)) : nullptr},
        {"inmem_buddy_recovery_rounds", {{"s", mem.buddy_each_s}, {"phases_s", mem.buddy_phases}}},
        {"inmem_restart_recovery_s", restart.total_s},
        {"inmem_restart_phases_s", restart_json(restart)["phases_s"]},
        {"inmem_restart_faults", restart_json(restart)["faults"]},
        {"inmem_restart_memory", a.restart.memory},
        {"inmem_restart_bound_s", 1.0 + 5 * median(memcpy_s)},
        {"inmem_vs_disk_recovery", mem.recovery_s / load_t}};
    add_s3_keys(doc, s3, s3_skipped, a.object_layout);
    if (a.json) {
      std::printf("%s\n", doc.dump().c_str());
    } else {
      std::printf("%s\n", doc.dump(2).c_str());
    }
  }
  if (r == 0 && !a.keep) {
    std::error_code ec;
    std::filesystem::remove_all(root, ec);
  }
  return Status::ok();
}

const CommandRegistration kRegister("bench", [](CLI::App& parent) {
  auto a = std::make_shared<CkptBenchArgs>();
  auto* cmd = parent.add_subcommand("ckpt",
                                    "Checkpoint stall, write, load and recovery vs baselines "
                                    "(starts --ranks local ranks unless launched)");
  cmd->add_option("--bytes", a->bytes, "whole state size, all ranks together (e.g. 1G)");
  cmd->add_option("--root", a->root,
                  "checkpoint directory (removed before, and after unless --keep)");
  cmd->add_option("--saves", a->saves, "saves to run; the first is not timed");
  cmd->add_flag("--zstd", a->zstd, "compress entries with zstd");
  cmd->add_flag("--keep", a->keep, "keep the last checkpoint under --root");
  cmd->add_flag("--json", a->json, "rank 0 prints one JSON line");
  cmd->add_option("--ranks", a->ranks, "local ranks to start when not run under a launcher")
      ->capture_default_str();
  cmd->add_flag("--inject-corruption", a->inject_corruption)->group("");  // tests only
  cmd->add_flag("--s3", a->s3,
                "also checkpoint to a local s3rver vs raw PUTs (s3_write_vs_raw_put)");
  cmd->add_option("--object-layout", a->object_layout,
                  "how the --s3 checkpoint stores each shard: chunks (part-sized objects) or "
                  "multipart (one multipart upload)")
      ->capture_default_str();
  // The restart measurement's child (bench_ckpt_restart.h); not for users.
  cmd->add_option("--restart-child", a->restart_child)->group("");
  cmd->add_option("--restart-dir", a->restart.dir)->group("");
  cmd->add_option("--restart-rows", a->restart.rows)->group("");
  cmd->add_option("--restart-cols", a->restart.cols)->group("");
  cmd->add_option("--restart-step", a->restart.step)->group("");
  cmd->add_option("--restart-memory", a->restart.memory)->group("");  // A/B (bench_ckpt_restart.h)
  cmd->add_option("--restart-ab", a->restart_ab)->group("")->delimiter(',');
  cmd->add_option("--restart-reps", a->restart_reps)->group("");
  cmd->add_option("--restart-run", a->restart.run)->group("");
  cmd->add_flag("--s3-alone", a->s3_alone)->group("");  // A/B of the s3 part alone
  cmd->add_flag("--s3-raw-overwrite", a->s3_raw_overwrite)->group("");  // A/B of the baseline
  cmd->add_flag("--s3-raw-after", a->s3_raw_after)->group("");          // A/B of the order
  cmd->callback(run_status([a] { return bench_ckpt(*a); }));
});

}  // namespace
}  // namespace kiln::cli
