// The `kiln train` loop for tensor and pipeline parallelism ([parallel]
// tp, pp > 1): the GPT split by gpt_3d.h over a DeviceMesh, each step one
// pipeline schedule (1F1B or interleaved) over parallel.microbatches
// micro-batches, data parallelism across the dp = world / (tp x pp)
// pipeline replicas with kiln::ddp (per model chunk, reducing at the chunk's
// last backward) or ZeRO-1.
//
// Every layout trains the same model on the same samples as one process with
// the whole batch: the data-parallel replicas split each step's batch, and
// each replica's micro-batches are its share in order (run_training's
// grad_accum = microbatches).
#pragma once

#include "kiln/base/status.h"
#include "kiln/comm/communicator.h"
#include "kiln/train/trainer.h"

namespace kiln::train {

// Collective over `world`; called by run_training when tp or pp > 1.
Result<TrainResult> run_training_3d(const TrainOptions& options, comm::Communicator& world);

}  // namespace kiln::train
