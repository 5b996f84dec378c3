#include "kiln/ckpt/checkpointer.h"

#include <fmt/format.h>

#include <cstring>

#include "kiln/base/knobs.h"
#include "kiln/base/logging.h"
#include "kiln/ckpt/commit.h"
#include "kiln/ckpt/internal/file.h"
#include "kiln/ckpt/remote.h"

namespace kiln::ckpt {
namespace {

const Knob<double> kCkptTimeout{"KILN_CKPT_TIMEOUT", 600.0,
                                "bound on waiting for a previous checkpoint save and on each "
                                "checkpoint commit collective, seconds"};

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

}  // namespace

Result<std::unique_ptr<Checkpointer>> Checkpointer::create(CheckpointOptions options) {
  if (options.root.empty()) return invalid_argument("Checkpointer: empty root directory");
  if (options.timeout.count() == 0) {
    options.timeout =
        std::chrono::milliseconds(static_cast<std::int64_t>(kCkptTimeout.get() * 1000));
  }
  if (options.busy == BusyPolicy::kSkip && options.comm != nullptr && options.comm->size() > 1) {
    // Each rank would decide alone whether its writer is still busy, and the
    // ranks would then commit different steps. Agreeing on skips is future
    // work.
    return invalid_argument("Checkpointer: BusyPolicy::kSkip is supported with one rank only");
  }
  if (options.fs == nullptr) options.fs = Fs::posix();
  KILN_RETURN_IF_ERROR(options.fs->make_dir(options.root));
  std::unique_ptr<data::ObjectStore> owned_remote;
  if (!options.remote.empty() && options.remote_store == nullptr) {
    auto store = data::open_object_store(options.remote);
    if (!store.is_ok()) {
      return store.status().with_context("Checkpointer: remote tier " + options.remote);
    }
    owned_remote = std::move(store).value();
  }
  return std::unique_ptr<Checkpointer>(
      new Checkpointer(std::move(options), std::move(owned_remote)));
}

Checkpointer::Checkpointer(CheckpointOptions options,
                           std::unique_ptr<data::ObjectStore> owned_remote)
    : options_(std::move(options)),
      rank_(options_.comm ? options_.comm->rank() : 0),
      world_(options_.comm ? options_.comm->size() : 1),
      owned_remote_(std::move(owned_remote)),
      remote_(options_.remote_store ? options_.remote_store : owned_remote_.get()) {
  writer_ = std::thread([this] { writer_loop(); });
}

Checkpointer::~Checkpointer() {
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

Result<SaveStart> Checkpointer::save_async(const StateView& state, std::int64_t step) {
  auto t0 = Clock::now();
  {
    std::unique_lock<std::mutex> l(mu_);
    if (busy_ && options_.busy == BusyPolicy::kSkip) {
      log()->warn(
          "checkpoint of step {} skipped: the save of step {} is still "
          "in flight",
          step, pending_step_);
      return SaveStart::kSkipped;
    }
    KILN_RETURN_IF_ERROR(wait_idle_locked(l, Deadline::after(options_.timeout)));
    if (!unreported_.is_ok()) {
      Status s = std::move(unreported_);
      unreported_ = Status::ok();
      return s;
    }
  }
  if (internal::path_exists(options_.root + "/" + step_dir_name(step))) {
    return already_exists(
        fmt::format("checkpoint step {} is already committed under {}", step, options_.root));
  }
  // No save in flight: the writer does not touch staging_ now.
  std::size_t need = state.total_bytes();
  grow_staging(need);
  staged_.clear();
  std::size_t off = 0;
  for (const auto& e : state.entries()) {
    if (e.bytes > 0) std::memcpy(staging_.get() + off, e.data, e.bytes);
    staged_.push_back(StagedEntry{e.name, e.is_tensor, e.spec, off, e.bytes});
    off += e.bytes;
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    busy_ = true;
    pending_step_ = step;
    stats_ = SaveStats{step, need, seconds_since(t0), 0, 0, 0, 0};
  }
  cv_.notify_all();
  return SaveStart::kStarted;
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
  // thread.
  grow_staging(bytes);
  return Status::ok();
}

Status Checkpointer::save(const StateView& state, std::int64_t step, Deadline deadline) {
  KILN_ASSIGN_OR_RETURN(auto started, save_async(state, step));
  (void)started;
  return wait(deadline);
}

SaveStats Checkpointer::last_stats() const {
  std::lock_guard<std::mutex> l(mu_);
  return stats_;
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

Status Checkpointer::run_save(std::int64_t step) {
  double memory_s = 0;
  if (options_.memory != nullptr) {
    auto tm = Clock::now();
    Status m = options_.memory->store(step, staged_, staging_.get());
    memory_s = seconds_since(tm);
    if (m.code() == Code::kAborted || m.code() == Code::kDeadlineExceeded) return m;
    // The storage copy still protects this step; the memory tier only speeds
    // recovery.
    if (!m.is_ok()) log()->warn("checkpoint step {}: {}", step, m.to_string());
  }
  auto t0 = Clock::now();
  std::string tmp = options_.root + "/" + tmp_step_dir_name(step);
  Status mk = options_.fs->make_dir(tmp);
  Result<ShardRecord> shard =
      mk.is_ok() ? write_shard(*options_.fs, tmp, rank_, staged_, staging_.get(),
                               ShardWriteOptions{options_.compression, options_.zstd_level})
                 : Result<ShardRecord>(mk);
  double write_s = seconds_since(t0);
  if (options_.after_shard_written_for_test) options_.after_shard_written_for_test(step);
  auto t1 = Clock::now();
  CommitContext ctx{options_.root,    step,       rank_, world_, options_.comm,
                    options_.timeout, options_.fs};
  Status s = commit_step(ctx, shard);
  if (s.is_ok() && rank_ == 0) {
    auto deleted = apply_retention(options_.root, options_.retention);
    if (!deleted.is_ok()) {
      // The checkpoint itself is committed; a retention failure only costs
      // space.
      log()->warn("checkpoint retention under {}: {}", options_.root, deleted.status().to_string());
    }
  }
  double commit_s = seconds_since(t1);
  auto t2 = Clock::now();
  // After the local commit, so a slow or failing remote never delays or
  // undoes it. Entered only after a successful commit, which every rank sees
  // alike (commit_step), so all ranks join its collective or none does.
  if (s.is_ok() && remote_ != nullptr) s = commit_remote(step, shard->file);
  std::lock_guard<std::mutex> l(mu_);
  stats_.memory_s = memory_s;
  stats_.write_s = write_s;
  stats_.commit_s = commit_s;
  stats_.remote_s = remote_ != nullptr ? seconds_since(t2) : 0;
  return s;
}

Status Checkpointer::commit_remote(std::int64_t step, const std::string& shard_file) {
  std::string step_dir = options_.root + "/" + step_dir_name(step);
  Status upload = upload_step_file(*remote_, step, shard_file, step_dir + "/" + shard_file,
                                   Deadline::after(options_.timeout));
  std::string where =
      fmt::format("checkpoint step {} is committed under {} but not on the remote tier {}", step,
                  options_.root, remote_->describe());
  // Every rank learns whose upload failed, so rank 0 never publishes a
  // manifest for a step with a missing shard.
  std::int32_t mine = upload.is_ok() ? 1 : 0;
  std::vector<std::int32_t> ok(static_cast<std::size_t>(world_), mine);
  if (world_ > 1) {
    Status ex = options_.comm->allgather(&mine, ok.data(), 1, comm::DataType::kInt32)
                    ->wait(options_.timeout);
    if (!ex.is_ok()) return ex.with_context(where);
  }
  if (!upload.is_ok()) return upload.with_context(where);
  std::vector<int> failed;
  for (int r = 0; r < world_; ++r) {
    if (ok[static_cast<std::size_t>(r)] == 0) failed.push_back(r);
  }
  if (!failed.empty()) {
    return unavailable(
        fmt::format("{}: the shard upload failed on rank(s) {}", where, fmt::join(failed, ", ")));
  }
  if (rank_ != 0) return Status::ok();
  // The manifest goes last: only now is the remote step committed.
  std::string manifest = step_dir + "/" + kManifestName;
  Status up =
      upload_step_file(*remote_, step, kManifestName, manifest, Deadline::after(options_.timeout));
  if (!up.is_ok()) return up.with_context(where);
  auto deleted =
      apply_remote_retention(*remote_, options_.retention, Deadline::after(options_.timeout));
  if (!deleted.is_ok()) {
    // The step is committed remotely; a retention failure only costs space.
    log()->warn("remote checkpoint retention: {}", deleted.status().to_string());
  }
  return Status::ok();
}

}  // namespace kiln::ckpt
