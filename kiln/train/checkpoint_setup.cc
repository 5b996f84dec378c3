#include "kiln/train/checkpoint_setup.h"

#include <filesystem>
#include <string>
#include <system_error>

#include "kiln/base/logging.h"
#include "kiln/objstore/object_store.h"

namespace kiln::train {

Result<CheckpointSetup> open_checkpoints(const CheckpointConfig& c, comm::Communicator& world,
                                         bool rows_as_saved) {
  CheckpointSetup s;
  if (c.dir.empty()) return s;
  if (!objstore::is_object_store_url(c.dir)) {
    std::error_code ec;
    std::filesystem::create_directories(c.dir, ec);
    if (ec) return errno_status("create checkpoint.dir " + c.dir, ec.value());
  }
  KILN_ASSIGN_OR_RETURN(s.comm, world.split(0, world.rank()));
  if (c.memory) {
    const std::string dir = c.memory_dir.empty() ? ckpt::default_memory_dir(c.dir) : c.memory_dir;
    KILN_ASSIGN_OR_RETURN(s.memory, ckpt::MemoryTier::open(
                                       {.dir = dir, .comm = s.comm.get(), .rows_as_saved = rows_as_saved}));
  }
  KILN_ASSIGN_OR_RETURN(auto layout, ckpt::parse_object_layout(c.object_layout));
  KILN_ASSIGN_OR_RETURN(s.checkpointer, ckpt::Checkpointer::create({.root = c.dir,
                                                                     .comm = s.comm.get(),
                                                                     .retention = {.keep_last = c.keep},
                                                                     .memory = s.memory.get(),
                                                                     .remote = c.remote,
                                                                     .object_layout = layout}));
  return s;
}

void CheckpointSetup::drop_memory_snapshots() {
  if (memory == nullptr) return;
  Status s = memory->clear();
  if (!s.is_ok()) log()->warn("in-memory checkpoints not removed: {}", s.to_string());
}

void CheckpointSetup::finish_retention(Deadline deadline) {
  if (checkpointer == nullptr) return;
  Status s = checkpointer->flush_retention(deadline);
  if (!s.is_ok()) log()->warn("checkpoint retention at the end of the run: {}", s.to_string());
}

}  // namespace kiln::train
