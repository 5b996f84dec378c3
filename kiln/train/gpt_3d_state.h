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

// This rank's rows of every parameter and of its optimizer moments, the
// optimizer step and layout as blobs, then generators and progress
// (train_state.h). AdamW or SGD (LibTorch's state).
Status capture_3d_state(Gpt3d& model, torch::optim::Optimizer& optimizer, const parallel::MeshLayout& mesh,
                        int rank, const Progress& progress, Snapshot* out);

// Restores a checkpoint saved by any layout (loaded whole) into this rank's
// shards and a LibTorch optimizer over them.
Result<Progress> restore_3d_state(const ckpt::LoadedState& loaded, Gpt3d& model,
                                  torch::optim::Optimizer& optimizer, int rank);

// The same checkpoint into one whole model (data parallel, one process):
// used by restore_state when it finds mesh/layout.
Status restore_whole_from_3d(const ckpt::LoadedState& loaded, torch::nn::Module& module,
                             torch::optim::Optimizer& optimizer);

}  // namespace kiln::train
