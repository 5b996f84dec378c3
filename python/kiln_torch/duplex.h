// Duplex: the allreduce of a two-rank group whose ranks talk over TCP, as
// one stream per direction (Note [One stream per direction for two ranks]).
//
// `out` is a communicator whose connection carries only this rank's bytes to
// the peer, `in` one that carries only the peer's bytes to this rank (the two
// ranks pass them crosswise: rank 0's out is rank 1's in). Every allreduce
// sends this rank's buffer on `out` and receives the peer's into scratch on
// `in`, chunk by chunk, and combines each chunk once both of its halves are
// done, in rank order (x0 OP x1 on both ranks, so both hold the same bits).
//
// Thread safety: allreduce() must be called with the process group's issue
// lock held (each communicator's operations are matched in issue order).
#pragma once

#include <ATen/ATen.h>

#include <cstddef>
#include <mutex>
#include <vector>

#include "kiln/comm/communicator.h"

namespace kiln::torch_backend {

class Duplex {
 public:
  Duplex(comm::Communicator* out, comm::Communicator* in, int rank);

  // Whether an allreduce of this shape takes the duplex path: large enough
  // that a second stream pays for itself, and a reduction that combines two
  // values exactly as the ring does (16-bit averages are rounded once, in
  // float32, by the ring; they stay there).
  static bool suits(std::size_t bytes, comm::DataType dt, comm::ReduceOp op);

  // Issues the operations of allreduce(buf) (count elements) and returns
  // them; buf holds the result once all are done. `scratch` receives the
  // peer's buffer (at least count elements' bytes) and must live as long.
  std::vector<comm::WorkPtr> allreduce(void* buf, void* scratch, std::size_t count,
                                       comm::DataType dt, comm::ReduceOp op);

  // A byte tensor of at least `bytes` for allreduce()'s scratch: a pooled one
  // no call holds any more when there is one (DDP's buckets repeat their
  // sizes every step; a fresh buffer costs a page fault per 4 KiB).
  at::Tensor scratch(std::size_t bytes);

 private:
  comm::Communicator* out_;
  comm::Communicator* in_;
  int rank_;
  std::mutex pool_mu_;
  std::vector<at::Tensor> pool_;  // guarded by pool_mu_
};

}  // namespace kiln::torch_backend
