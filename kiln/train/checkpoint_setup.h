// The checkpoint machinery of one training run, set up the same way by the
// data-parallel loop (trainer.cc) and the 3D loop (trainer_3d.cc).
#pragma once

#include <memory>

#include "kiln/base/status.h"
#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/memory_tier.h"
#include "kiln/comm/communicator.h"
#include "kiln/train/train_config.h"

namespace kiln::train {

// Declared in destruction order's reverse: the checkpointer goes first, then
// the in-memory tier it writes to, then the communicator both use.
struct CheckpointSetup {
  // The checkpoints' own communicator: the writer thread issues collectives
  // while training runs on the world communicator.
  std::unique_ptr<comm::Communicator> comm;
  std::unique_ptr<ckpt::MemoryTier> memory;  // null: checkpoint.memory = false
  std::unique_ptr<ckpt::Checkpointer> checkpointer;

  bool enabled() const { return checkpointer != nullptr; }

  // After a run that finished (not one stopped for a restart): nothing is
  // left to recover, and /dev/shm is memory. A failure is logged, not fatal.
  void drop_memory_snapshots();
  // After a run that finished (not one stopped for a restart): waits for
  // rank 0's retention on an object store, so that the run leaves exactly
  // the steps it keeps (~Checkpointer stops it after the delete in flight:
  // Note [Retention after the commit]). A failure is logged, not fatal.
  void finish_retention(Deadline deadline);
};

// Collective over `world`. Empty (nothing enabled) when checkpoint.dir is
// empty; otherwise creates a local checkpoint.dir, splits the checkpoint
// communicator, opens the in-memory tier (checkpoint.memory) and the
// Checkpointer with its retention and remote tier. `rows_as_saved`: the
// in-memory tier recovers the rows each rank saved (MemoryTierOptions), for
// states saved in another split than the even one (3D canonical rows).
Result<CheckpointSetup> open_checkpoints(const CheckpointConfig& c, comm::Communicator& world,
                                         bool rows_as_saved = false);

}  // namespace kiln::train
