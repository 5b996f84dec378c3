// The checkpoint adapter between LibTorch and kiln::ckpt: what a training
// checkpoint holds and how it comes back.
//
//   param/<name>, buffer/<name>  tensors; every rank holds them whole (data
//                                parallel) but saves only its even share of
//                                rows, so the writing is spread over ranks
//   rng                          [world, state bytes] uint8: row r is rank r's
//                                CPU generator (dropout)
//   optim                        blob: the optimizer's serialized state
//   progress                     blob: JSON {step, epoch, consumed}
//
// Restoring reads the whole checkpoint on every rank (each needs the whole
// model) and works on any world size: a rank r takes generator row
// r % saved world size.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/base/xxh3.h"
#include "kiln/ckpt/gather.h"
#include "kiln/ckpt/state.h"
#include "kiln/parallel/zero/sharded_data_parallel.h"

namespace kiln::train {

struct Progress {
  std::int64_t step = 0;       // optimizer steps done
  std::uint64_t epoch = 0;     // sampler epoch
  std::uint64_t consumed = 0;  // samples of that epoch consumed globally
};

// Owns the bytes a StateView points at until the save call returns.
struct Snapshot {
  ckpt::StateView view;
  std::string optim_blob;
  std::string layout_blob;  // sharded strategies: the unit layout
  std::string progress_blob;
  torch::Tensor rng;
  std::vector<torch::Tensor> keep_alive;
};

Status capture_state(torch::nn::Module& module, torch::optim::Optimizer& optimizer,
                     const Progress& progress, int rank, int world, Snapshot* out);

// The module's parameters and buffers as they are checkpointed (param/<name>,
// buffer/<name>), each the whole tensor's memory: where a recovery from
// memory may restore them in place (resume.h). Tensors that are not
// contiguous or have a dtype checkpoints do not hold are left out. Valid
// while the module's tensors are not replaced.
std::vector<ckpt::WholeTarget> whole_targets(torch::nn::Module& module);

// Loads a whole checkpoint loaded for rank 0 of 1 (ckpt::load_step(dir, 0, 1))
// into the module, optimizer and this rank's generator. Entries restored in
// place (in_place, from whole_targets of this module) are left as they are. A checkpoint saved by
// a sharded strategy (zero/...) loads too: its unit flats are cut back into
// the parameters and its moments become the optimizer's state. DataLoss naming the
// entry if a tensor is missing or has another shape than the model's.
Result<Progress> restore_state(const ckpt::LoadedState& loaded, torch::nn::Module& module,
                               torch::optim::Optimizer& optimizer, int rank);

// The generator rows ("rng", row `rank` of `world`) and the progress blob
// every checkpoint holds; restore_rng takes row rank % the saved world.
Status add_rng_and_progress(const Progress& progress, int rank, int world, Snapshot* out);
Status restore_rng(const ckpt::LoadedState& loaded, int rank);
Result<Progress> restore_progress(const ckpt::LoadedState& loaded);

// Sharded strategies (kiln/parallel/zero): this rank's shares of every unit's
// master parameters and optimizer moments (zero/<unit>/...), the layout and
// optimizer step as blobs, then buffers, generators and progress as above.
Status capture_sharded_state(parallel::zero::ShardedDataParallel& sharded, const Progress& progress,
                             int rank, int world, Snapshot* out);

// Restores a sharded checkpoint loaded for this rank or whole, saved on any
// world size by any sharded strategy, or a 3D run's checkpoint (mesh/layout)
// loaded in any rows: collective over `comm` then, which assembles its whole
// tensors (kiln/ckpt/gather.h) to cut the units' flats from.
Result<Progress> restore_sharded_state(const ckpt::LoadedState& loaded,
                                       parallel::zero::ShardedDataParallel& sharded, int rank,
                                       comm::Communicator& comm);

// xxh3-64 over parameters' bytes, added in order.
class ParameterDigest {
 public:
  void add(const torch::Tensor& parameter);
  std::uint64_t value() const { return hash_.digest(); }

 private:
  Xxh3 hash_;
};

// xxh3-64 over every parameter's bytes in registration order: two runs with
// equal digests hold bit-identical parameters.
std::uint64_t parameter_digest(torch::nn::Module& module);

}  // namespace kiln::train
