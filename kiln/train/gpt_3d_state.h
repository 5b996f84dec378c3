// The state of a 3D-parallel GPT (gpt_3d.h) as a whole: a digest of every
// rank's parameters, the whole model reassembled from its parts, and its
// checkpoints (docs/formats.md "3D training state").
//
// Note [Canonical rows]: a checkpoint stores each parameter of the whole
// model once, as `mesh/param/<name>`, in a layout where every tensor rank's
// shard is a contiguous range of rows: the split dimension moved first and,
// for q/k/v, the three blocks interleaved row by row ([N / b, b, ...]).
// Each rank writes its rows (its tensor shard, split again over the data
// replicas, which hold the same values), and any layout, or one process,
// reads the whole tensor back and takes its own shard.
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/ckpt/state.h"
#include "kiln/comm/communicator.h"
#include "kiln/parallel/mesh/mesh_layout.h"
#include "kiln/train/gpt_3d.h"
#include "kiln/train/train_config.h"
#include "kiln/train/train_state.h"

namespace kiln::train {

// xxh3 over the digests of the first replica's ranks in rank order: equal
// for two runs of one layout with bit-identical parameters. Collective.
Result<std::uint64_t> layout_digest(Gpt3d& model, const parallel::MeshLayout& mesh, comm::Communicator& world);

// Every parameter of the whole model, flattened in its registration order
// (as one process holds it), on every rank. Collective over `world`.
Result<std::vector<float>> gather_whole_parameters(Gpt3d& model, const ModelConfig& config,
                                                   const parallel::MeshLayout& mesh, comm::Communicator& world);

// One parameter's shard as this rank holds it, with its optimizer state:
// float32, the shard's shape; `first`/`second` undefined where the optimizer
// has none (AdamW: exp_avg, exp_avg_sq; SGD: momentum in `first`). Whoever
// holds the state (a LibTorch optimizer, ZeRO-1's shares gathered over the
// replicas: gpt_3d_zero.h) hands it over in this form.
struct ShardState {
  torch::Tensor value, first, second;
};

// The optimizer record of a 3D checkpoint (`mesh/optim`).
struct OptimizerRecord {
  bool adam = false;
  bool momentum = false;  // SGD: the checkpoint holds momentum buffers
  std::int64_t step = 0;
};

// This rank's rows of every parameter and of its optimizer moments
// (`states` in model.params() order), the optimizer record and layout as
// blobs, then generators and progress (train_state.h).
Status capture_3d_states(Gpt3d& model, const std::vector<ShardState>& states, const OptimizerRecord& record,
                         const parallel::MeshLayout& mesh, int rank, const Progress& progress, Snapshot* out);
// The same from a LibTorch optimizer over the shards (AdamW or SGD).
Status capture_3d_state(Gpt3d& model, torch::optim::Optimizer& optimizer, const parallel::MeshLayout& mesh,
                        int rank, const Progress& progress, Snapshot* out);

// This rank's shard of every parameter and its optimizer state (in
// model.params() order) from a checkpoint saved by any layout, loaded whole;
// FailedPrecondition if it was not saved by a 3D run, DataLoss naming the
// entry if one is missing or does not fit.
Result<std::vector<ShardState>> load_3d_states(const ckpt::LoadedState& loaded, Gpt3d& model, int rank,
                                               OptimizerRecord* record);

// Restores a checkpoint saved by any layout (loaded whole) into this rank's
// shards and a LibTorch optimizer over them.
Result<Progress> restore_3d_state(const ckpt::LoadedState& loaded, Gpt3d& model,
                                  torch::optim::Optimizer& optimizer, int rank);

// The same checkpoint into one whole model (data parallel, one process):
// used by restore_state when it finds mesh/layout.
Status restore_whole_from_3d(const ckpt::LoadedState& loaded, torch::nn::Module& module,
                             torch::optim::Optimizer& optimizer);

// The same checkpoint (loaded whole) in the sharded data-parallel form
// (docs/formats.md "Sharded training state") of the units `zero_layout`
// names (a `zero/layout` blob of the run that loads it): each unit's
// parameters and moments concatenated into whole flat tensors, its
// `zero/optim` record, and the blobs (rng, progress) as they are. DataLoss
// naming the parameter when the model does not fit the checkpoint.
Result<ckpt::LoadedState> sharded_state_from_3d(const ckpt::LoadedState& loaded, const std::string& zero_layout);

}  // namespace kiln::train
