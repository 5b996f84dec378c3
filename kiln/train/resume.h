// Where a training run starts: the newest checkpoint, or from scratch.
//
// Under `kiln run`, a restarted job (KILN_RESTART_COUNT > 0) first asks the
// in-memory tier (kiln/ckpt/memory_tier.h): the ranks' snapshots and their
// ring buddies' replicas on /dev/shm, which a job that lost a process holds
// for a step at least as new as storage's. Each rank gets its share back and
// the ranks assemble the whole model from the shares (gather_whole_tensors):
// no storage read. Otherwise, and when memory cannot serve every rank, the
// newest checkpoint that loads from storage. A fresh run never resumes from
// memory: a user who deleted the checkpoint directory to start over gets a
// fresh start, not a stale snapshot.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <optional>
#include <span>

#include "kiln/base/status.h"
#include "kiln/ckpt/gather.h"
#include "kiln/ckpt/memory_tier.h"
#include "kiln/comm/communicator.h"
#include "kiln/train/train_config.h"
#include "kiln/train/train_state.h"

namespace kiln::train {

struct Resumed {
  Progress progress;
  bool from_memory = false;
  int in_place = 0;  // tensors recovered from memory straight into the model's memory
};

// True when `kiln run` restarted this worker group (KILN_RESTART_COUNT > 0).
bool restarted_by_launcher();

// Collective over `comm`. `memory` (may be null) and its communicator
// `memory_comm` are used only when `use_memory`. nullopt: start from scratch.
// FailedPrecondition when resume is off and the directory holds committed
// steps (starting over would collide with them).
//
// `restore` puts a loaded checkpoint into the model (restore_state or
// restore_sharded_state). `whole`: every rank needs every tensor (data
// parallel); false: a rank reads only its share from storage (sharded
// strategies, whose restore takes any loaded rows that cover its share).
//
// `in_place` (optional, with `whole`): the model's own tensors, whole, by
// checkpoint name (param/..., buffer/...). A recovery from memory restores
// them where they lie: each rank's rows straight from its snapshot (or its
// buddy's replica), then the other ranks' rows gathered straight in (Note
// [Gathered in place], kiln/ckpt/gather.h): no copy of the state. Their
// entries then come to `restore` in_place, with no data: it must leave those
// tensors as they are. A recovery that fails after writing into them falls
// back to storage as any other, which overwrites them all; DataLoss when
// storage has no checkpoint either (the model's initial values are gone).
using RestoreFn = std::function<Result<Progress>(const ckpt::LoadedState&)>;
Result<std::optional<Resumed>> resume(const TrainConfig& c, const RestoreFn& restore, bool whole,
                                      comm::Communicator& comm, ckpt::MemoryTier* memory,
                                      comm::Communicator* memory_comm, bool use_memory,
                                      std::span<const ckpt::WholeTarget> in_place = {});

}  // namespace kiln::train
