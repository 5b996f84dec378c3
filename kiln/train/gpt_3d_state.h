// The state of a 3D-parallel GPT (gpt_3d.h) as a whole: a digest of every
// rank's parameters, and the whole model reassembled from its parts.
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/comm/communicator.h"
#include "kiln/parallel/mesh/mesh_layout.h"
#include "kiln/train/gpt_3d.h"
#include "kiln/train/train_config.h"

namespace kiln::train {

// xxh3 over the digests of the first replica's ranks in rank order: equal
// for two runs of one layout with bit-identical parameters. Collective.
Result<std::uint64_t> layout_digest(Gpt3d& model, const parallel::MeshLayout& mesh, comm::Communicator& world);

// Every parameter of the whole model, flattened in its registration order
// (as one process holds it), on every rank. Collective over `world`.
Result<std::vector<float>> gather_whole_parameters(Gpt3d& model, const ModelConfig& config,
                                                   const parallel::MeshLayout& mesh, comm::Communicator& world);

}  // namespace kiln::train
