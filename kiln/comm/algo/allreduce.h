// Allreduce algorithms. All take element counts and an element size, work
// out of place (send may equal recv) and leave identical bits on every rank.
#pragma once

#include <functional>

#include "kiln/comm/algo/group.h"

namespace kiln::comm::algo {

struct AllreduceArgs {
  const void* send;
  void* recv;
  std::size_t count;
  DataType dtype;
  ReduceOp op;
};

// Ring: reduce-scatter then allgather around the ring; 2(n-1) steps moving
// 2(n-1)/n of the buffer. Bandwidth-optimal for large messages.
Status allreduce_ring(const Env& env, const AllreduceArgs& a);

// Recursive doubling: log2(p) full-buffer exchanges (+2 to fold a
// non-power-of-two world). Latency-optimal for small messages.
Status allreduce_recursive_doubling(const Env& env, const AllreduceArgs& a);

// Rabenseifner: recursive-halving reduce-scatter then recursive-doubling
// allgather; 2·log2(p) steps moving 2(p-1)/p of the buffer. Any world size.
Status allreduce_halving_doubling(const Env& env, const AllreduceArgs& a);

// Two-level: reduce inside each host, allreduce among one leader per host
// (`inter` picks the leaders' algorithm), broadcast inside each host.
// `host_of[i]` is the host index of group member i.
Status allreduce_hierarchical(const Env& env, const AllreduceArgs& a,
                              const std::vector<int>& host_of,
                              Status (*inter)(const Env&, const AllreduceArgs&));

// What allreduce_direct did.
enum class DirectPath {
  kNotRun,          // nothing: the caller runs another algorithm
  kSharedBuffers,   // this rank's buffers were SharedBuffers
  kSharedInPlace,   // this rank's plain memory was shared in place
};

struct DirectOptions {
  // Plain memory of messages of at least this many bytes is shared in place
  // (Note [Sharing user memory in place], kiln/comm/shared_in_place.h);
  // 0: never, only SharedBuffers qualify.
  std::size_t share_in_place_from_bytes = 0;
  // Runs the elements that some rank's buffers do not reach (the partial
  // pages at either end of memory shared in place).
  std::function<Status(const Env&, const AllreduceArgs&)> usual;
};

// Direct: when every rank of the group is on this host and every rank's send
// and recv are SharedBuffers (or memory shared in place, as `o` allows),
// each rank reduces its share straight from every input into every output
// (Note [Direct allreduce on shared buffers]). Exchanges one small offer
// with every peer first; returns kNotRun, having done nothing else, when
// some rank's buffers cannot be reached (every rank then returns kNotRun),
// so the caller runs another algorithm.
Result<DirectPath> allreduce_direct(const Env& env, const AllreduceArgs& a,
                                    const DirectOptions& o);

// Single-copy: when every rank of the group is on this host, each rank reads
// its share of every peer's input and then every peer's reduced share
// through the kernel (process_vm_readv; Note [Single-copy allreduce through
// the kernel], cma.cc). Exchanges one small offer and a probe result with
// every peer first; returns false, having written nothing, when some rank
// cannot read a peer's memory (every rank then returns false).
Result<bool> allreduce_cma(const Env& env, const AllreduceArgs& a);

// Note [16-bit floats accumulate in float32] (reduce.h), for algorithms that
// do not handle it themselves: runs `run` in place on a float32 copy of
// a.send (Scratch::kWide) and rounds the result into a.recv once. Every
// message `run` sends is float32. Call only when accumulates_in_float32.
Status allreduce_in_float32(const Env& env, const AllreduceArgs& a,
                            const std::function<Status(const Env&, const AllreduceArgs&)>& run);

}  // namespace kiln::comm::algo
