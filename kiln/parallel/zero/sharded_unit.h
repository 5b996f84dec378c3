// ShardedDataParallel's per-unit state and the storage swap that frees and
// gathers a unit's parameters, shared by the wrapper's files: setup
// (sharded_setup.cc), gathering and reductions (sharded_data_parallel.cc),
// memory and checkpoints (sharded_state.cc). Not part of the public API.
#pragma once

#include <c10/core/StorageImpl.h>

#include "kiln/parallel/zero/sharded_data_parallel.h"

namespace kiln::parallel::zero {

struct ShardedDataParallel::Unit {
  std::string name;
  std::vector<const torch::nn::Module*> modules;  // empty: the root unit
  std::vector<torch::Tensor> params;
  std::vector<std::string> names;
  std::unique_ptr<FlatLayout> layout;
  FlatRange mine;
  torch::Tensor flat;  // whole parameters (compute dtype); see Note [Freeing ...]
  std::size_t flat_bytes = 0;
  std::size_t padded_bytes = 0;  // world × block() elements: a pooled block's size
  bool allocated = true;
  enum class Params { kFreed, kGathering, kGathered } state = Params::kGathered;
  comm::WorkPtr gather_work;
  torch::Tensor master;      // fp32 share (a view into flat when flat is fp32 and stays)
  bool master_is_view = false;
  torch::Tensor send;        // stage 3: the compute-dtype share sent by gathers
  torch::Tensor grad_share;  // block() elements, compute dtype; rows [0, mine.count) used
  bool share_fresh = true;   // grad_share holds nothing since the last step
  torch::Tensor staging;     // padded whole gradient (world × block)
  torch::Tensor partial;     // a reduce-scatter's result when grad_share already holds some
  comm::WorkPtr reduce_work;
  std::size_t pending = 0;
  bool complete = false;
  bool entered = false;  // went through run_unit() in the first forward
  std::size_t opt_index = 0;
  std::size_t grad_bytes_alive = 0;  // autograd's .grad tensors not yet dropped
};

// Note [Freeing a unit's parameters]: the module's parameters are views into
// the unit's flat tensor, and autograd's saved variables point at the same
// storage. Freeing swaps the storage's memory out (nbytes 0) and gathering
// swaps a pooled block in, so every view, saved or not, sees the gathered
// values without being rebuilt (FSDP resizes the storage for the same reason).
// The block goes back to the pool, where the unit's reduction staging or the
// next gather takes it (Note [One block per unit in flight]).
inline void release_storage(const torch::Tensor& flat) {
  c10::StorageImpl* s = flat.storage().unsafeGetStorageImpl();
  s->set_data_ptr_noswap(c10::DataPtr(nullptr, c10::Device(c10::kCPU)));
  s->set_nbytes(0);
}

inline void set_storage(const torch::Tensor& flat, c10::DataPtr block, std::size_t bytes) {
  c10::StorageImpl* s = flat.storage().unsafeGetStorageImpl();
  s->set_data_ptr_noswap(std::move(block));
  s->set_nbytes(bytes);
}

}  // namespace kiln::parallel::zero
