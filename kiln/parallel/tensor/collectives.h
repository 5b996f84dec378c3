// Megatron-LM's tensor-parallel collectives as autograd operations
// (Shoeybi et al., "Megatron-LM", 2019, section 3):
//
//   copy_to_group      f: identity forward, allreduce of the gradient backward
//   reduce_from_group  g: allreduce forward, identity backward
//
// A column-parallel linear layer reads its input through f; a row-parallel
// one's partial outputs meet through g, so each transformer layer costs two
// allreduces in the forward pass and two in the backward.
//
// The vocabulary-parallel embedding and cross-entropy keep the vocabulary
// split over the group: no rank ever holds the whole logits.
//
// Every call blocks until its collective finishes (at most the group's
// operation timeout); a failure throws std::runtime_error naming the
// operation and the group, which the trainer turns back into a Status at the
// LibTorch boundary. A group of one rank communicates nothing. The group
// must outlive the autograd graph built with it.
#pragma once

#include <torch/torch.h>

#include "kiln/comm/communicator.h"

namespace kiln::parallel::tensor {

torch::Tensor copy_to_group(const torch::Tensor& x, comm::Communicator& group);
torch::Tensor reduce_from_group(const torch::Tensor& x, comm::Communicator& group);

// Sequence parallelism (Korthikanti et al., 2022): activations outside the
// tensor-parallel regions are split along dimension `dim` (the sequence)
// over the group. gather: allgather forward, reduce-scatter backward;
// reduce_scatter: the reverse. The size along `dim` must divide by the group.
torch::Tensor gather_from_sequence(const torch::Tensor& x, std::int64_t dim, comm::Communicator& group);
torch::Tensor reduce_scatter_to_sequence(const torch::Tensor& x, std::int64_t dim,
                                         comm::Communicator& group);

// tokens (int64, any shape) looked up in this rank's rows
// [vocab_start, vocab_start + weight.size(0)) of the embedding; rows owned by
// other ranks read as zero and the group's sum is the full lookup.
torch::Tensor vocab_parallel_embedding(const torch::Tensor& tokens, const torch::Tensor& weight,
                                       std::int64_t vocab_start, comm::Communicator& group);
// This rank's part of the lookup before the group's sum (sequence
// parallelism reduce-scatters it instead of allreducing).
torch::Tensor vocab_embedding_partial(const torch::Tensor& tokens, const torch::Tensor& weight,
                                      std::int64_t vocab_start);

// Per-token cross-entropy [N] of logits split by vocabulary: this rank holds
// columns [vocab_start, vocab_start + logits.size(1)) of [N, vocab]; targets
// [N] are global ids. Same value as the loss of the gathered logits.
torch::Tensor vocab_parallel_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets,
                                           std::int64_t vocab_start, comm::Communicator& group);

}  // namespace kiln::parallel::tensor
