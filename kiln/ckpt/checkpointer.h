// Checkpointer: asynchronous sharded saves that stall training only for a
// copy into host staging memory.
//
//   auto ck = Checkpointer::create({.root = "/ckpt", .comm = &ckpt_comm});
//   StateView s; s.add_tensor("w", kFloat32, {R, C}, off, rows, w.data()); ...
//   KILN_RETURN_IF_ERROR(ck->save_async(s, step).status());  // returns after
//   the copy
//   ...
//   KILN_RETURN_IF_ERROR(ck->wait(Deadline::after_seconds(60)));
//
// save_async copies the state into a staging buffer that is reused across
// saves (the only part training waits for; with an in-memory tier, the
// tier's next snapshot file: MemoryTier::stage), then the checkpointer's one
// writer thread stores the snapshot in the in-memory tier if one is given
// (memory_tier.h), writes this rank's shard, runs the commit protocol
// (commit.h) and, on rank 0, retention (retention.h); then, with a remote
// tier, uploads the committed step (remote.h). With a URL root, rank 0's
// retention runs in the background after the commit (Note [Retention after
// the commit] in checkpointer_retention.cc).
//
// In flight: at most one save. A save_async while one runs waits for it
// (BusyPolicy::kWait, bounded by `timeout`) or returns kSkipped after a
// logged warning (kSkip). With several ranks, kSkip is decided together:
// each save_async first votes (every rank says whether its previous save is
// still running), and if any rank is busy every rank skips the step, so all
// ranks still commit the same steps. The vote runs on a communicator that
// create() splits from `comm` for it alone, since the writer thread may be
// in a collective on `comm` at the time (Note [The kSkip busy vote] in
// checkpointer.cc).
//
// Failures of a background save are logged when they happen and returned by
// the next save_async or wait() call, once — never dropped.
//
// Collective: every rank must call save_async with the same steps in the
// same order. The communicator must be used by nothing else while saves run
// (give it one of its own, e.g. comm.split(0, comm.rank())), because the
// writer thread issues collectives on it. With kSkip and several ranks,
// create() is collective on it too (the split of the vote communicator).
//
// Threads: save_async, save and wait from one thread at a time.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"
#include "kiln/ckpt/format.h"
#include "kiln/ckpt/fs.h"
#include "kiln/ckpt/memory_tier.h"
#include "kiln/ckpt/retention.h"
#include "kiln/ckpt/shard_writer.h"
#include "kiln/ckpt/state.h"
#include "kiln/comm/communicator.h"
#include "kiln/objstore/object_store.h"

namespace kiln::ckpt {

enum class BusyPolicy { kWait, kSkip };

struct CheckpointOptions {
  // Where checkpoints go, the same on every rank: a directory on a shared
  // filesystem, or an object store's URL (s3://BUCKET/PREFIX, file://DIR).
  // With a URL no shared filesystem is needed: each rank's writer streams
  // its shard straight to the store, rank 0 puts the manifest last as the
  // commit (commit_step_to_store) and applies retention there; load with
  // load_latest_remote.
  std::string root;
  comm::Communicator* comm = nullptr;  // null: a single process (rank 0 of 1)
  RetentionPolicy retention;
  BusyPolicy busy = BusyPolicy::kWait;
  Compression compression = Compression::kNone;
  int zstd_level = 1;
  // Bounds waiting for a previous save and each commit collective;
  // 0 = KILN_CKPT_TIMEOUT.
  std::chrono::milliseconds timeout{0};
  // The filesystem the write path uses; null = the real one (tests inject
  // faults).
  Fs* fs = nullptr;
  // The in-memory tier (memory_tier.h), on the same communicator: each save
  // is stored there (and replicated to the ring successor) before it goes to
  // storage. Null: storage only. Not owned; must outlive the Checkpointer.
  MemoryTier* memory = nullptr;
  // The remote tier (remote.h): s3://BUCKET/PREFIX or file://DIR, the same
  // on every rank; "" = none. Only with a filesystem `root` (a URL root is
  // on the object store already). After the local commit, each rank's writer
  // uploads its shard, then rank 0 uploads the manifest last and applies
  // `retention` to the remote steps. An upload failure is a background save
  // failure; the local commit stands.
  std::string remote;
  // The store for `remote`; null = objstore::open_object_store(remote). Not
  // owned; must outlive the Checkpointer (tests pass one with options).
  objstore::ObjectStore* remote_store = nullptr;
  // The store for a URL `root`; null = objstore::open_object_store(root). Not
  // owned; must outlive the Checkpointer (tests pass one with options).
  objstore::ObjectStore* store = nullptr;
  // With a URL `root`: each shard as part-sized chunk objects (plain PUTs,
  // listed in the manifest) or as one multipart upload (Note [Shards as
  // chunk objects], remote.h). Loads read both.
  ObjectLayout object_layout = ObjectLayout::kChunks;
  // Tests only: runs on the writer thread once this rank's shard is durable,
  // before the commit (lets a test hold a save in flight).
  std::function<void(std::int64_t step)> after_shard_written_for_test;
  // Tests only: runs in ~Checkpointer once it has asked the background
  // retention to stop, before it waits for anything.
  std::function<void()> after_retention_stop_for_test;
};

enum class SaveStart { kStarted, kSkipped };

// Timings of the last completed save, seconds.
struct SaveStats {
  std::int64_t step = -1;
  std::size_t bytes = 0;   // this rank's raw bytes
  double stall_s = 0;      // inside save_async: the staging copy
  double memory_s = 0;     // in-memory tier: snapshot + replica exchange (0 without one)
  double write_s = 0;      // shard write + fsync
  ShardWriteTimes write;   // where write_s went
  double commit_s = 0;     // exchange, manifest, rename, retention (a filesystem root)
  // Rank 0's retention after this step's commit (0 elsewhere): part of
  // commit_s on a filesystem root; with a URL root it runs in the background
  // and is 0 until it has finished (flush_retention).
  double retention_s = 0;
  double remote_s = 0;     // shard upload, manifest upload, remote retention (0 without one)
};

class Checkpointer {
 public:
  // InvalidArgument for an empty root, or a remote tier beside a URL root;
  // errors creating the root directory, or opening and listing the store.
  // With BusyPolicy::kSkip and several ranks, every rank must call it: it
  // splits `comm` (blocking until all ranks do; the split's errors, e.g.
  // Aborted or DeadlineExceeded).
  static Result<std::unique_ptr<Checkpointer>> create(CheckpointOptions options);
  // Asks rank 0's background retention to stop after the delete in flight
  // (the next commit's retention deletes the rest; Note [Retention after the
  // commit]), waits (bounded by the timeout) for a save in flight, then
  // stops the writer and waits for that delete.
  ~Checkpointer();

  // Copies `state` into staging memory and starts writing step `step` in the
  // background. Returns a pending background failure first, if any (the new
  // save is then not started). AlreadyExists if step-N is committed already;
  // DeadlineExceeded if the previous save did not finish within the timeout.
  // kSkip with several ranks: first blocks in the busy vote until every rank
  // has called save_async for this step; kSkipped on every rank if any was
  // still saving. A vote that fails returns the communicator's error (e.g.
  // Aborted, or DeadlineExceeded after `timeout`) naming the step, starts
  // nothing, and leaves every later save_async failing the same way:
  // re-form the group.
  Result<SaveStart> save_async(const StateView& state, std::int64_t step);

  // Allocates (and faults in) staging memory for states up to `bytes` now, so
  // the first save_async stalls no longer than later ones. Optional; waits
  // for a save in flight (DeadlineExceeded past the timeout).
  Status reserve(std::size_t bytes);

  // save_async, then wait until it is committed.
  Status save(const StateView& state, std::int64_t step, Deadline deadline);

  // Blocks until no save is in flight or `deadline`; returns (and clears) the
  // failure of a background save not reported yet. DeadlineExceeded leaves
  // the save running.
  Status wait(Deadline deadline);

  // With a URL root: blocks until rank 0's background retention (if any is
  // running) has finished or `deadline`, and returns (and clears) the
  // failure of one not reported yet (it was logged when it happened).
  // Retention failures never fail a save: the step is committed, and a
  // later retention retries what was left. Ok elsewhere.
  Status flush_retention(Deadline deadline);
  SaveStats last_stats() const;
  int rank() const { return rank_; }
  int world_size() const { return world_; }

 private:
  Checkpointer(CheckpointOptions options, std::unique_ptr<objstore::ObjectStore> owned_remote,
               std::unique_ptr<objstore::ObjectStore> owned_store,
               std::vector<std::int64_t> store_committed,
               std::unique_ptr<comm::Communicator> vote_comm);
  void writer_loop();
  // kSkip: which ranks' previous save is still running (agreed on vote_comm_
  // with several ranks). On save_async's thread; `step` is for messages.
  struct BusyVote {
    std::vector<int> ranks;            // empty: no rank is busy
    std::int64_t step_in_flight = -1;  // the step the first busy rank saves
  };
  Result<BusyVote> vote_busy(std::int64_t step);
  Status run_save(std::int64_t step);  // on the writer thread
  // run_save's storage half for a filesystem root and for a URL root; fill
  // the write's and the commit's fields of `times`.
  Status save_to_fs(std::int64_t step, SaveStats* times);
  Status save_to_store(std::int64_t step, SaveStats* times);
  bool committed_already(std::int64_t step) const;
  // After step `step` committed locally: uploads this rank's `shard_file`,
  // agrees with the other ranks that all uploads succeeded, then (rank 0)
  // uploads the manifest and applies remote retention.
  Status commit_remote(std::int64_t step, const std::string& step_dir,
                       const std::string& shard_file);
  Status wait_idle_locked(std::unique_lock<std::mutex>& lock, Deadline deadline);
  // On the writer thread, after step `step` committed to the store: starts
  // rank 0's retention on retention_ (after joining the previous one).
  void start_store_retention(std::int64_t step);
  // Where the next save's state goes: the in-memory tier's stage(), or
  // staging_. Only while no save is in flight.
  std::byte* staging_for(std::size_t bytes);
  void grow_staging(std::size_t bytes);  // only while no save is in flight

  const CheckpointOptions options_;
  const int rank_;
  const int world_;
  std::unique_ptr<objstore::ObjectStore> owned_remote_;  // when opened from options_.remote
  objstore::ObjectStore* remote_ = nullptr;              // null: no remote tier
  std::unique_ptr<objstore::ObjectStore> owned_store_;   // when opened from a URL root
  objstore::ObjectStore* store_ = nullptr;               // null: a filesystem root

  // Staging memory, reused across saves; grown (and pre-faulted) on demand.
  // Written by save_async only while no save is in flight, read by the writer.
  // Unused while the in-memory tier stages (staging_for).
  std::unique_ptr<std::byte[]> staging_;
  std::size_t staging_capacity_ = 0;
  std::byte* staged_at_ = nullptr;   // same rule: where the save's state lies
  std::vector<StagedEntry> staged_;  // same rule as staging_

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool busy_ = false;               // guarded by mu_: a save is in flight
  std::int64_t pending_step_ = -1;  // guarded by mu_: the save to run
  bool stop_ = false;               // guarded by mu_
  Status unreported_;               // guarded by mu_: first background failure not yet returned
  SaveStats stats_;                 // guarded by mu_
  // URL root: the steps committed on the store (listed at create, then ours),
  // so save_async's AlreadyExists check costs no request.
  std::vector<std::int64_t> store_committed_;  // guarded by mu_
  std::thread writer_;                         // the one checkpoint writer
  // URL root, rank 0: the background retention. The thread object is
  // started and joined by the writer thread, and joined last by ~Checkpointer.
  std::thread retention_;
  // Set by ~Checkpointer: retention stops after the delete in flight.
  std::atomic<bool> retention_stop_{false};
  bool retention_running_ = false;    // guarded by mu_
  Status retention_failed_;           // guarded by mu_: not yet returned by flush_retention
  std::int64_t retention_step_ = -1;  // guarded by mu_: the step whose retention finished last
  double retention_step_s_ = 0;       // guarded by mu_: and how long it took

  // The kSkip busy vote, used only by save_async's thread. The buffers are
  // declared before vote_comm_ so that a vote still running after a timed-out
  // wait (the communicator is aborted then) never writes freed memory:
  // destroying the communicator joins its engine first.
  std::int64_t vote_mine_[2] = {0, -1};            // {busy, step in flight}
  std::vector<std::int64_t> vote_all_;             // world_ x vote_mine_, rank order
  std::unique_ptr<comm::Communicator> vote_comm_;  // kSkip, several ranks: the vote only
  Status vote_failed_;  // the first failed vote; every later vote fails with it
};

}  // namespace kiln::ckpt
