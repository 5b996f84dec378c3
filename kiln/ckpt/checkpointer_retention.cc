// Rank 0's retention on an object store, after the commit (Note [Retention
// after the commit]).
#include <fmt/format.h>

#include <exception>
#include <string>
#include <system_error>
#include <utility>

#include "kiln/base/logging.h"
#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/remote.h"

namespace kiln::ckpt {

Status Checkpointer::flush_retention(Deadline deadline) {
  std::unique_lock<std::mutex> l(mu_);
  if (!cv_.wait_until(l, deadline.at(), [&] { return !retention_running_; })) {
    return deadline_exceeded(
        fmt::format("checkpoint retention on {} is still running", options_.root));
  }
  return std::exchange(retention_failed_, Status::ok());
}

// Note [Retention after the commit]: on an object store the manifest is the
// commit, so once it is put the step is durable and loadable, and deleting
// older steps can wait. Deleting them inside the commit made every save
// wait for them (~0.6 s of a 1 GiB step's commit on s3rver: 64 chunk
// objects, docs/perf.md), as Orbax's CheckpointManager avoids with
// `enable_background_delete`. So rank 0 runs retention on a thread of its
// own once the commit returned. It never deletes the newest committed step:
// apply_remote_retention keeps the newest of its own listing, taken after
// this commit, and drops uploads as interrupted only below this step (a
// later one, uploading beside it, is above; so is one of a job resumed
// below a newer committed step). One runs at a time (the next commit's joins
// the last), and a failure is logged when it happens and returned once by
// flush_retention(), never by a save (an exception in it, or a thread that
// cannot start, is such a failure): the step is committed, and the next
// retention retries what was left. ~Checkpointer does not wait for all of
// it: an elastic restart destroys the Checkpointer, and a retention with
// several old steps to delete (a job resumed with a smaller keep_last, or
// after failed deletes) would hold the new generation back by each step's
// deletes. It sets retention_stop_, which apply_remote_retention reads
// before each step: the step being deleted is finished (its manifest went
// first, so a half-deleted step is an uncommitted one, which retention
// removes too) and the rest is left to the next commit's retention, which
// lists the store afresh. The newest committed step is never among them.
void Checkpointer::start_store_retention(std::int64_t step) {
  if (retention_.joinable()) retention_.join();
  auto finish = [this, step](const Result<std::vector<std::string>>& deleted, double took) {
    if (!deleted.is_ok()) {
      log()->warn("checkpoint retention on {} after step {}: {}", options_.root, step,
                  deleted.status().to_string());
    }
    std::lock_guard<std::mutex> l(mu_);
    retention_running_ = false;
    retention_step_ = step;
    retention_step_s_ = took;
    if (!deleted.is_ok() && retention_failed_.is_ok()) retention_failed_ = deleted.status();
    cv_.notify_all();
  };
  {
    std::lock_guard<std::mutex> l(mu_);
    retention_running_ = true;
  }
  try {
    retention_ = std::thread([this, step, finish] {
      auto t0 = Clock::now();
      Result<std::vector<std::string>> deleted = internal_error("retention did not run");
      try {
        deleted = apply_remote_retention(*store_, options_.retention,
                                         Deadline::after(options_.timeout), step,
                                         &retention_stop_);
        if (deleted.is_ok() && retention_stop_.load()) {
          log()->info("checkpoint retention on {} after step {} stopped at shutdown after "
                      "deleting {} step(s); the next commit's retention deletes the rest",
                      options_.root, step, deleted->size());
        }
      } catch (const std::exception& e) {
        deleted = internal_error(std::string("retention threw: ") + e.what());
      }
      finish(deleted, seconds_since(t0));
    });
  } catch (const std::system_error& e) {  // no thread: retention is skipped, not left "running"
    finish(internal_error(std::string("cannot start the retention thread: ") + e.what()), 0);
  }
}

}  // namespace kiln::ckpt
