#include "kiln/ckpt/checkpointer.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "kiln/base/file.h"
#include "kiln/base/fs.h"
#include "kiln/base/knobs.h"
#include "kiln/base/logging.h"
#include "kiln/ckpt/remote.h"

namespace kiln::ckpt {
namespace {

const Knob<double> kCkptTimeout{"KILN_CKPT_TIMEOUT", 600.0,
                                "bound on waiting for a previous checkpoint save and on each "
                                "checkpoint commit collective, seconds"};

}  // namespace

Result<std::unique_ptr<Checkpointer>> Checkpointer::create(CheckpointOptions options) {
  if (options.root.empty()) return invalid_argument("Checkpointer: empty root directory");
  if (options.timeout.count() == 0) {
    options.timeout =
        std::chrono::milliseconds(static_cast<std::int64_t>(kCkptTimeout.get() * 1000));
  }
  std::unique_ptr<comm::Communicator> vote_comm;
  if (options.busy == BusyPolicy::kSkip && options.comm != nullptr && options.comm->size() > 1) {
    // First, before anything a single rank can fail at, so that the ranks
    // are never left waiting in the split for one that returned early.
    auto split = options.comm->split(0, options.comm->rank());
    if (!split.is_ok()) {
      return split.status().with_context(fmt::format(
          "Checkpointer under {}: splitting the communicator of the BusyPolicy::kSkip vote",
          options.root));
    }
    vote_comm = std::move(split).value();
  }
  if (options.fs == nullptr) options.fs = Fs::posix();
  std::unique_ptr<objstore::ObjectStore> owned_store;
  std::vector<std::int64_t> store_committed;
  if (objstore::is_object_store_url(options.root)) {
    if (!options.remote.empty()) {
      return invalid_argument(fmt::format(
          "Checkpointer: checkpoints go to the object store {} already; drop the remote tier {}",
          options.root, options.remote));
    }
    if (options.store == nullptr) {
      auto store = objstore::open_object_store(options.root);
      if (!store.is_ok()) return store.status().with_context("Checkpointer: " + options.root);
      owned_store = std::move(store).value();
    }
    objstore::ObjectStore& store = options.store ? *options.store : *owned_store;
    auto listed = list_remote_committed_steps(store, Deadline::after(options.timeout));
    if (!listed.is_ok()) return listed.status().with_context("Checkpointer: " + options.root);
    store_committed = std::move(listed).value();
  } else {
    KILN_RETURN_IF_ERROR(options.fs->make_dir(options.root));
  }
  std::unique_ptr<objstore::ObjectStore> owned_remote;
  if (!options.remote.empty() && options.remote_store == nullptr) {
    auto store = objstore::open_object_store(options.remote);
    if (!store.is_ok()) {
      return store.status().with_context("Checkpointer: remote tier " + options.remote);
    }
    owned_remote = std::move(store).value();
  }
  return std::unique_ptr<Checkpointer>(
      new Checkpointer(std::move(options), std::move(owned_remote), std::move(owned_store),
                       std::move(store_committed), std::move(vote_comm)));
}

Checkpointer::Checkpointer(CheckpointOptions options,
                           std::unique_ptr<objstore::ObjectStore> owned_remote,
                           std::unique_ptr<objstore::ObjectStore> owned_store,
                           std::vector<std::int64_t> store_committed,
                           std::unique_ptr<comm::Communicator> vote_comm)
    : options_(std::move(options)),
      rank_(options_.comm ? options_.comm->rank() : 0),
      world_(options_.comm ? options_.comm->size() : 1),
      owned_remote_(std::move(owned_remote)),
      remote_(options_.remote_store ? options_.remote_store : owned_remote_.get()),
      owned_store_(std::move(owned_store)),
      store_(options_.store ? options_.store : owned_store_.get()),
      store_committed_(std::move(store_committed)),
      vote_all_(2 * static_cast<std::size_t>(world_)),
      vote_comm_(std::move(vote_comm)) {
  writer_ = std::thread([this] { writer_loop(); });
}

Checkpointer::~Checkpointer() {
  // First, so that neither the save in flight's start of a retention nor
  // the last join below waits for more than one delete.
  retention_stop_.store(true);
  if (options_.after_retention_stop_for_test) options_.after_retention_stop_for_test();
  Status s = wait(Deadline::after(options_.timeout));
  if (!s.is_ok()) log()->error("checkpointer shutting down: {}", s.to_string());
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  // A save still running past the timeout is blocked in I/O or a collective
  // bounded by that same timeout, so the join ends.
  writer_.join();
  // The last retention: the delete in flight, bounded by its own deadline;
  // a failure was logged.
  if (retention_.joinable()) retention_.join();
}

Status Checkpointer::wait_idle_locked(std::unique_lock<std::mutex>& lock, Deadline deadline) {
  if (!cv_.wait_until(lock, deadline.at(), [&] { return !busy_; })) {
    return deadline_exceeded(
        fmt::format("checkpoint save of step {} on rank {} still running under {}", pending_step_,
                    rank_, options_.root));
  }
  return Status::ok();
}

Status Checkpointer::wait(Deadline deadline) {
  std::unique_lock<std::mutex> l(mu_);
  KILN_RETURN_IF_ERROR(wait_idle_locked(l, deadline));
  Status s = std::move(unreported_);
  unreported_ = Status::ok();
  return s;
}

// Note [The kSkip busy vote]: with several ranks, each rank deciding alone
// whether its writer is still busy would let one rank skip a step that
// another saves, and commit_step would then refuse every later step
// (FailedPrecondition). So save_async first gathers every rank's busy flag
// and all ranks act on the same gathered flags. This is consistent because
// only save_async — on the one thread that votes — sets busy_ to true: a
// rank that voted "not busy" stays not busy until it starts this very save.
// (A rank that voted "busy" may finish meanwhile; it still skips, as all do.)
// The vote is not issued on options_.comm, where the writer thread may be in
// a commit collective at that moment, but on vote_comm_, split from it in
// create(), which carries nothing else. Every save_async votes, even one
// that then returns a pending failure, so the ranks' votes stay matched.
Result<Checkpointer::BusyVote> Checkpointer::vote_busy(std::int64_t step) {
  std::string what = fmt::format(
      "checkpoint of step {} under {}: the BusyPolicy::kSkip vote of rank {} with the other ranks "
      "failed; the save was not started",
      step, options_.root, rank_);
  // The vote communicator is aborted; a failed vote may even still be
  // running, so its buffers stay untouched.
  if (!vote_failed_.is_ok()) return vote_failed_.with_context(what);
  BusyVote vote;
  {
    std::lock_guard<std::mutex> l(mu_);
    vote_mine_[0] = busy_ ? 1 : 0;
    vote_mine_[1] = busy_ ? pending_step_ : -1;
  }
  if (vote_comm_ == nullptr) {
    std::copy(vote_mine_, vote_mine_ + 2, vote_all_.begin());
  } else {
    Status s = vote_comm_->allgather(vote_mine_, vote_all_.data(), 2, comm::DataType::kInt64)
                   ->wait(options_.timeout);
    if (!s.is_ok()) {
      // A timed-out vote may still be running: abort, so that no later vote
      // is matched with it (and the peers learn at once).
      vote_comm_->abort(s);
      vote_failed_ = s;
      return s.with_context(what);
    }
  }
  for (int r = 0; r < world_; ++r) {
    if (vote_all_[2 * static_cast<std::size_t>(r)] == 0) continue;
    if (vote.ranks.empty()) vote.step_in_flight = vote_all_[2 * static_cast<std::size_t>(r) + 1];
    vote.ranks.push_back(r);
  }
  return vote;
}

Result<SaveStart> Checkpointer::save_async(const StateView& state, std::int64_t step) {
  auto t0 = Clock::now();
  if (options_.busy == BusyPolicy::kSkip) {
    KILN_ASSIGN_OR_RETURN(BusyVote vote, vote_busy(step));
    if (!vote.ranks.empty()) {
      log()->warn(
          "checkpoint of step {} skipped: the save of step {} is still in flight on rank(s) {}",
          step, vote.step_in_flight, fmt::join(vote.ranks, ", "));
      return SaveStart::kSkipped;
    }
  }
  {
    std::unique_lock<std::mutex> l(mu_);
    // After a vote that found no rank busy, this returns at once.
    KILN_RETURN_IF_ERROR(wait_idle_locked(l, Deadline::after(options_.timeout)));
    if (!unreported_.is_ok()) {
      Status s = std::move(unreported_);
      unreported_ = Status::ok();
      return s;
    }
  }
  if (committed_already(step)) {
    return already_exists(
        fmt::format("checkpoint step {} is already committed under {}", step, options_.root));
  }
  // No save in flight: the writer does not touch the staging memory now.
  std::size_t need = state.total_bytes();
  staged_at_ = staging_for(need);
  staged_.clear();
  std::size_t off = 0;
  for (const auto& e : state.entries()) {
    if (e.bytes > 0) std::memcpy(staged_at_ + off, e.data, e.bytes);
    staged_.push_back(StagedEntry{e.name, e.is_tensor, e.spec, off, e.bytes});
    off += e.bytes;
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    busy_ = true;
    pending_step_ = step;
    stats_ = SaveStats{.step = step, .bytes = need, .stall_s = seconds_since(t0)};
  }
  cv_.notify_all();
  return SaveStart::kStarted;
}

// With an in-memory tier the state is staged in the tier's next snapshot
// file, so the tier's store makes no copy of its own (Note [Staged in the
// snapshot], memory_tier.cc) and no staging buffer of the state's size is
// needed beside it; the storage write reads the same memory.
std::byte* Checkpointer::staging_for(std::size_t bytes) {
  if (options_.memory != nullptr && bytes > 0) {
    auto staged = options_.memory->stage(bytes);
    if (staged.is_ok()) return *staged;
    log()->warn("checkpoint on rank {}: {}; staging in process memory instead", rank_,
                staged.status().to_string());
  }
  grow_staging(bytes);
  return staging_.get();
}

void Checkpointer::grow_staging(std::size_t bytes) {
  if (bytes <= staging_capacity_) return;
  staging_.reset(new std::byte[bytes]);
  // Fault the pages in now, not inside a save's stall.
  std::memset(staging_.get(), 0, bytes);
  staging_capacity_ = bytes;
}

Status Checkpointer::reserve(std::size_t bytes) {
  std::unique_lock<std::mutex> l(mu_);
  KILN_RETURN_IF_ERROR(wait_idle_locked(l, Deadline::after(options_.timeout)));
  // busy_ stays false while we hold mu_, and save_async runs on this same
  // thread. Touched now, not inside a save's stall.
  std::byte* at = staging_for(bytes);
  if (at != staging_.get() && bytes > 0) std::memset(at, 0, bytes);
  return Status::ok();
}

Status Checkpointer::save(const StateView& state, std::int64_t step, Deadline deadline) {
  KILN_ASSIGN_OR_RETURN(auto started, save_async(state, step));
  (void)started;
  return wait(deadline);
}

SaveStats Checkpointer::last_stats() const {
  std::lock_guard<std::mutex> l(mu_);
  SaveStats s = stats_;
  if (store_ != nullptr) s.retention_s = retention_step_ == s.step ? retention_step_s_ : 0;
  return s;
}

void Checkpointer::writer_loop() {
  std::unique_lock<std::mutex> l(mu_);
  while (true) {
    cv_.wait(l, [&] { return stop_ || (busy_ && pending_step_ >= 0); });
    if (stop_ && !busy_) return;
    std::int64_t step = pending_step_;
    l.unlock();
    Status s = run_save(step);
    l.lock();
    if (!s.is_ok()) {
      log()->error("checkpoint save of step {} failed: {}", step, s.to_string());
      if (unreported_.is_ok()) unreported_ = s;
    }
    busy_ = false;
    pending_step_ = -1;
    cv_.notify_all();
  }
}

bool Checkpointer::committed_already(std::int64_t step) const {
  if (store_ == nullptr) return path_exists(options_.root + "/" + step_dir_name(step));
  std::lock_guard<std::mutex> l(mu_);
  return std::find(store_committed_.begin(), store_committed_.end(), step) !=
         store_committed_.end();
}

Status Checkpointer::run_save(std::int64_t step) {
  double memory_s = 0;
  if (options_.memory != nullptr) {
    auto tm = Clock::now();
    Status m = options_.memory->store(step, staged_, staged_at_);
    memory_s = seconds_since(tm);
    if (m.code() == Code::kAborted || m.code() == Code::kDeadlineExceeded) return m;
    // The storage copy still protects this step; the memory tier only speeds
    // recovery.
    if (!m.is_ok()) log()->warn("checkpoint step {}: {}", step, m.to_string());
  }
  SaveStats times;  // the write's and the commit's
  Status s = store_ != nullptr ? save_to_store(step, &times) : save_to_fs(step, &times);
  auto t2 = Clock::now();
  // After the local commit, so a slow or failing remote never delays or
  // undoes it. Entered only after a successful commit, which every rank sees
  // alike (commit_step), so all ranks join its collective or none does.
  if (s.is_ok() && remote_ != nullptr) {
    s = commit_remote(step, options_.root + "/" + step_dir_name(step), shard_file_name(rank_));
  }
  std::lock_guard<std::mutex> l(mu_);
  stats_.memory_s = memory_s;
  stats_.write_s = times.write_s;
  stats_.write = times.write;
  stats_.commit_s = times.commit_s;
  stats_.retention_s = times.retention_s;
  stats_.remote_s = remote_ != nullptr ? seconds_since(t2) : 0;
  return s;
}

}  // namespace kiln::ckpt
