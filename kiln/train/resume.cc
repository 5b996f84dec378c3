#include "kiln/train/resume.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "kiln/base/logging.h"
#include "kiln/ckpt/gather.h"
#include "kiln/ckpt/load.h"
#include "kiln/ckpt/remote_load.h"
#include "kiln/ckpt/retention.h"
#include "kiln/comm/agree.h"
#include "kiln/objstore/object_store.h"

namespace kiln::train {
namespace {

// Bounds each resume collective: generous, since rank 0 may be reading a
// large checkpoint while the others wait for its choice.
constexpr std::chrono::milliseconds kResumeTimeout{600000};

// The newest step in memory that every rank can restore, as whole tensors.
// NotFound (the same on every rank) when memory cannot serve.
// Tensors named in `in_place` are restored into that memory (Note [Gathered
// in place], kiln/ckpt/gather.h).
Result<ckpt::LoadedState> from_memory(const TrainConfig& c, ckpt::MemoryTier& memory,
                                      comm::Communicator& comm,
                                      std::span<const ckpt::WholeTarget> in_place) {
  ckpt::LoadOptions o{comm.rank(), comm.size(), &comm, kResumeTimeout};
  // Each rank's rows of each tensor, as the tier's snapshots hold them.
  std::vector<ckpt::RecoverTarget> rows;
  for (const auto& t : in_place) {
    if (t.rows <= 0) continue;
    const std::size_t row_bytes = t.bytes / static_cast<std::size_t>(t.rows);
    const ckpt::RowRange mine = ckpt::even_rows(t.rows, comm.rank(), comm.size());
    rows.push_back({t.name, t.data + static_cast<std::size_t>(mine.offset) * row_bytes,
                    static_cast<std::size_t>(mine.count) * row_bytes});
  }
  KILN_ASSIGN_OR_RETURN(ckpt::LoadedState share,
                        ckpt::recover_if_not_older(c.checkpoint.dir, memory, o, rows));
  return ckpt::gather_whole_tensors(std::move(share), comm, o.timeout, in_place);
}

// Rank 0 picks the newest step that loads whole; everyone then reads it
// whole (data parallel: every rank needs every tensor) or its own share
// (sharded strategies). NotFound when none.
Result<ckpt::LoadedState> from_storage(const TrainConfig& c, comm::Communicator& comm, bool whole) {
  std::int64_t step = -1;
  if (comm.rank() == 0) {
    auto latest = ckpt::load_latest(c.checkpoint.dir, {});
    if (latest.is_ok()) {
      step = latest->step;
    } else if (latest.status().code() != Code::kNotFound) {
      log()->warn("resume: {}; starting from scratch", latest.status().to_string());
    }
  }
  KILN_RETURN_IF_ERROR(comm.broadcast(&step, 1, comm::DataType::kInt64, 0)->wait(kResumeTimeout));
  if (step < 0) return not_found("no checkpoint to resume from in " + c.checkpoint.dir);
  const std::string dir = fmt::format("{}/step-{}", c.checkpoint.dir, step);
  auto loaded = whole ? ckpt::load_step(dir, 0, 1) : ckpt::load_step(dir, comm.rank(), comm.size());
  // Each rank read on its own: one rank's failure (a corrupt or missing
  // shard where it reads) fails every rank here, naming the rank and the
  // file, rather than leaving the others in the first collective of
  // training until its exit aborts the group.
  Status agreed = comm::agree(comm, loaded.status(), kResumeTimeout);
  if (!agreed.is_ok()) return agreed.with_context("resume: loading " + dir);
  return loaded;
}

// The newest step on an object store (`url`): each rank downloads into its
// own cache (`cache`) and gets its share; with `whole` the ranks assemble the
// whole model from the shares. NotFound when none.
Result<ckpt::LoadedState> from_store(const std::string& url, const std::string& cache,
                                     comm::Communicator& comm, bool whole) {
  ckpt::LoadOptions o{comm.rank(), comm.size(), &comm, kResumeTimeout};
  std::error_code ec;
  std::filesystem::create_directories(cache, ec);
  if (ec) return errno_status("create the checkpoint download cache " + cache, ec.value());
  auto share = ckpt::load_latest_remote(url, cache, o);
  // The downloaded copy served its purpose: the step is in memory now.
  std::filesystem::remove_all(cache, ec);
  if (!share.is_ok() || !whole) return share;
  return ckpt::gather_whole_tensors(std::move(*share), comm, kResumeTimeout);
}

// The remote tier, for a run whose dir has none; the run writes its own
// checkpoints to dir from here on.
Result<ckpt::LoadedState> from_remote(const TrainConfig& c, comm::Communicator& comm, bool whole) {
  return from_store(c.checkpoint.remote,
                    fmt::format("{}/remote-cache/rank-{}", c.checkpoint.dir, comm.rank()), comm,
                    whole);
}

// checkpoint.dir is an object store's URL: nothing of it is on local disk, so
// the shards stream through a scratch cache of this process.
Result<ckpt::LoadedState> from_store_dir(const TrainConfig& c, comm::Communicator& comm,
                                         bool whole) {
  const char* tmp = std::getenv("TMPDIR");
  std::string cache =
      fmt::format("{}/kiln-resume-{}-rank-{}", tmp != nullptr && *tmp != '\0' ? tmp : "/tmp",
                  ::getpid(), comm.rank());
  return from_store(c.checkpoint.dir, cache, comm, whole);
}

}  // namespace

bool restarted_by_launcher() {
  const char* n = std::getenv("KILN_RESTART_COUNT");
  return n != nullptr && std::atoi(n) > 0;
}

Result<std::optional<Resumed>> resume(const TrainConfig& c, const RestoreFn& restore, bool whole,
                                      comm::Communicator& comm, ckpt::MemoryTier* memory,
                                      comm::Communicator* memory_comm, bool use_memory,
                                      std::span<const ckpt::WholeTarget> in_place) {
  if (c.checkpoint.dir.empty()) return std::optional<Resumed>();
  if (!c.checkpoint.resume) {
    // Starting over would collide with (and retention would delete) the
    // committed steps already there: refuse rather than lose them.
    auto steps = ckpt::list_committed_steps(c.checkpoint.dir);
    if (steps.is_ok() && !steps->empty()) {
      return failed_precondition(fmt::format(
          "checkpoint.dir {} holds committed steps (newest {}) and resume is off: pick another "
          "directory or remove them",
          c.checkpoint.dir, steps->front()));
    }
    return std::optional<Resumed>();
  }
  Resumed out;
  Result<ckpt::LoadedState> loaded = not_found("");
  // Why the model's tensors no longer hold their initial values, when a
  // recovery from memory wrote into them and then failed.
  std::string overwritten;
  if (use_memory && memory != nullptr && memory_comm != nullptr) {
    if (!whole) in_place = {};
    loaded = from_memory(c, *memory, *memory_comm, in_place);
    out.from_memory = loaded.is_ok();
    if (!loaded.is_ok() && !in_place.empty() && memory->last_recovery().attempts > 0) {
      overwritten = loaded.status().to_string();
    }
    if (!loaded.is_ok()) {
      // Every rank sees the same outcome (recover and the gather agree
      // first), so all fall back together, unless the links themselves failed.
      const Code code = loaded.status().code();
      if (code == Code::kAborted || code == Code::kDeadlineExceeded) return loaded.status();
      if (code == Code::kNotFound) {
        log()->info("resume: {}; loading from storage", loaded.status().message());
      } else {
        log()->warn("resume: the in-memory checkpoint does not restore ({}); loading from storage",
                    loaded.status().to_string());
      }
    }
  }
  if (!out.from_memory) {
    loaded = objstore::is_object_store_url(c.checkpoint.dir) ? from_store_dir(c, comm, whole)
                                                             : from_storage(c, comm, whole);
    if (!loaded.is_ok() && loaded.status().code() == Code::kNotFound &&
        !c.checkpoint.remote.empty()) {
      log()->info("resume: nothing to load in {}; trying the remote tier {}", c.checkpoint.dir,
                  c.checkpoint.remote);
      loaded = from_remote(c, comm, whole);
    }
    if (!loaded.is_ok()) {
      if (loaded.status().code() == Code::kNotFound && !overwritten.empty()) {
        return data_loss(fmt::format(
            "resume: the in-memory checkpoint failed after restoring into the model ({}) and "
            "{} holds no checkpoint to restore instead: the run cannot start from its initial "
            "values; restart it (a fresh run ignores memory)",
            overwritten, c.checkpoint.dir));
      }
      if (loaded.status().code() == Code::kNotFound) return std::optional<Resumed>();
      return loaded.status();
    }
  }
  for (const auto& e : loaded->entries) out.in_place += e.in_place ? 1 : 0;
  KILN_ASSIGN_OR_RETURN(out.progress, restore(*loaded));
  log()->info(
      "resumed from {}{} (step {}, epoch {}, {} samples of it consumed; {} tensors in place)",
      out.from_memory ? "memory, " : "", loaded->dir, out.progress.step, out.progress.epoch,
      out.progress.consumed, out.in_place);
  return std::optional<Resumed>(out);
}

}  // namespace kiln::train
