// Which committed checkpoints stay, and the lock that keeps a checkpoint
// being loaded from being deleted.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/base/fd.h"
#include "kiln/base/status.h"

namespace kiln::ckpt {

struct RetentionPolicy {
  int keep_last = 3;            // the newest K committed steps (at least 1 is always kept)
  std::int64_t keep_every = 0;  // also keep steps divisible by this forever; 0 = off
};

// Committed step numbers under `root` (directories named step-N), newest
// first. Does not check that they load. NotFound if `root` does not exist.
// An object store's URL as `root` lists the steps with a manifest object
// there (list_remote_committed_steps).
Result<std::vector<std::int64_t>> list_committed_steps(const std::string& root);

// Names of uncommitted step directories under `root` (step-N.tmp: a save in
// flight, or one a crash interrupted), sorted.
Result<std::vector<std::string>> list_uncommitted(const std::string& root);

// A shared flock(2) on a step directory, held while it is read: retention
// skips a directory it cannot lock exclusively. Works across processes.
class StepReadLock {
 public:
  // Blocks only while retention is renaming the directory away (microseconds).
  // NotFound if the directory is gone (then pick another step).
  static Result<StepReadLock> acquire(const std::string& step_dir);
  // Closing the directory releases the lock.

 private:
  explicit StepReadLock(Fd fd) : fd_(std::move(fd)) {}
  Fd fd_;
};

// Run by rank 0 after each commit (so never before a newer one exists):
// deletes committed steps the policy does not keep — never the newest, never
// one a StepReadLock holds (it is retried after the next commit) — and .tmp
// directories older than the newest commit (left by crashed saves). A step is
// first renamed to .trash-step-N, so loaders never see it half-deleted.
// Returns the names it deleted.
Result<std::vector<std::string>> apply_retention(const std::string& root,
                                                 const RetentionPolicy& policy);

}  // namespace kiln::ckpt
