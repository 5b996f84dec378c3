// The other collectives' algorithms. Counts are in elements of `es` bytes.
#pragma once

#include <vector>

#include "kiln/comm/algo/group.h"

namespace kiln::comm::algo {

// Binomial tree broadcast from group member `root`; log2(n) rounds.
Status broadcast_tree(const Env& env, void* buf, std::size_t bytes, int root);

// Binomial tree reduce to `root`; recv is written on the root only.
Status reduce_tree(const Env& env, const void* send, void* recv, std::size_t count, DataType dtype,
                   ReduceOp op, int root);

// Ring allgather of blocks of possibly different sizes: member i contributes
// counts[i] elements; recv holds them back to back in member order.
Status allgather_ring(const Env& env, const void* send, void* recv,
                      const std::vector<std::size_t>& counts, std::size_t es);

// Ring reduce-scatter: send holds n blocks of `count` elements; member i ends
// with block i reduced in recv.
Status reduce_scatter_ring(const Env& env, const void* send, void* recv, std::size_t count,
                           DataType dtype, ReduceOp op);

// Pairwise-exchange all-to-all of n blocks of `bytes` each.
Status alltoall_pairwise(const Env& env, const void* send, void* recv, std::size_t bytes);

// Dissemination barrier: ceil(log2 n) rounds of one-byte messages.
Status barrier_dissemination(const Env& env);

}  // namespace kiln::comm::algo
