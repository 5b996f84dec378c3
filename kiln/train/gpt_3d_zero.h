// ZeRO-1 across the pipeline replicas of a 3D GPT (gpt_3d.h): one
// ShardedDataParallel (stage 1) per model chunk over the data-parallel group,
// and what a 3D run needs beyond those wrappers: clipping by the global
// gradient norm over every shard of the model (tensor, pipeline and data),
// and checkpoint state in the layout-free mesh/ format of gpt_3d_state.h, so
// a ZeRO-1 checkpoint resumes on any layout and any strategy.
//
// Note [The global norm under ZeRO-1 and tensor parallelism]: the norm of
// one process is over every parameter of the whole model once. Each
// wrapper's clip_grad_norm(inf) gives the norm over its chunk's shares summed
// over the replicas: the exact step gradient of this rank's tensor shard,
// where TP-split parameters are distinct on each tensor rank but replicated
// ones (norms, biases of row-parallel layers, positions) are the same on all
// T of them, so summing the chunks' squares over the world counts those T
// times. Tensor rank 0 also keeps its own sum of the replicated parameters'
// gradients (hooks on them, reduced over the replicas at the step: a few
// vectors of d_model) and subtracts T - 1 copies of their square.
// Scaling goes through clip_grad_norm again with a bound chosen so its own
// coefficient is the global one.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/comm/communicator.h"
#include "kiln/parallel/zero/sharded_data_parallel.h"
#include "kiln/train/gpt_3d.h"
#include "kiln/train/gpt_3d_state.h"

namespace kiln::train {

class Gpt3dZero {
 public:
  // Collective over `data` (each chunk's wrapper broadcasts and shards).
  // `track_norm`: the run clips, so tensor rank 0 keeps the replicated
  // parameters' gradients for the global norm.
  static Result<std::unique_ptr<Gpt3dZero>> create(Gpt3d& model, comm::Communicator& data,
                                                   int tp_rank, parallel::zero::ZeroOptions options,
                                                   bool track_norm);
  ~Gpt3dZero();
  Gpt3dZero(const Gpt3dZero&) = delete;
  Gpt3dZero& operator=(const Gpt3dZero&) = delete;

  // Backpropagates one micro-batch of `chunk` and reduce-scatters its
  // gradients into the shares.
  Status backward(int chunk, const torch::Tensor& scalar);
  // The global L2 norm of the step's gradients over the whole model, as one
  // process computes it; scales the shares so it is at most max_norm
  // (torch::nn::utils::clip_grad_norm_'s rule). Collective over `world`.
  Result<double> clip_grad_norm(double max_norm, comm::Communicator& world);
  // The optimizer step of every chunk's shares; returns once the new
  // parameters are gathered.
  Status step(double lr);
  double exposed_comm_s() const;

  // Every parameter of this rank's tensor shard (model.params() order): its
  // fp32 master value and moments, whole (gathered over the replicas), for
  // capture_3d_states. Collective over the data group.
  Result<std::vector<ShardState>> gather_states(OptimizerRecord* record);
  // The inverse: each chunk's wrapper takes its shares of `states` (from
  // load_3d_states of the checkpoint `where`) and regathers the parameters.
  Status restore_states(const std::vector<ShardState>& states, const OptimizerRecord& record,
                        const std::string& where);

 private:
  struct Chunk;
  Gpt3dZero(Gpt3d& model, comm::Communicator& data);
  // Unit layout of chunk c as capture() describes it, with each parameter's
  // index in model.params().
  Status describe(Chunk& c);

  Gpt3d& model_;
  comm::Communicator& data_;
  std::vector<std::unique_ptr<Chunk>> chunks_;
  // Note [The global norm ...]: this step's replicated gradients, summed over
  // micro-batches (tensor rank 0, when clipping); views per parameter.
  torch::Tensor replicated_grads_;
  std::vector<std::pair<torch::Tensor, unsigned>> hooks_;  // parameter, hook index
};

}  // namespace kiln::train
