#include "python/kiln_torch/duplex.h"

#include <algorithm>
#include <atomic>
#include <memory>

#include "kiln/comm/reduce.h"

namespace kiln::torch_backend {
namespace {

// Note [One stream per direction for two ranks]: between two ranks, every
// allreduce algorithm must carry each rank's whole buffer to the other, N
// bytes each way, as the ring does. But the ring makes each direction wait
// on the other: its allgather sends what the reduce-scatter received, and a
// communicator runs one operation at a time, so the next bucket's bytes
// wait until this bucket's last byte has arrived from the peer. On a shaped
// link, DDP's ranks reach each bucket tens of milliseconds apart (backward
// on a shared CPU), and each such skew idles one direction at every phase
// and bucket boundary (bench/torch_backend.sh --timeline: 20–160 ms gaps
// on one direction while the other runs at line rate). Sending the buffer
// as it is, on a connection of its own, removes every dependency between
// the directions: a rank's bytes leave as soon as DDP hands over the bucket
// and the bucket before it has left, whatever the peer is doing; the peer's
// arrive on the other connection into scratch and are combined as each
// chunk lands. Both connections carry data one way only, so neither waits
// behind the other's operations. Measured (docs/perf.md, issue 21, session
// 5): each step ends within 6–17 ms of the link's floor, but the DDP step's
// median is no better than the ring's (0.6–1.5% slower, within the noise),
// so it is opt-in (KILN_TORCH_DUPLEX=1).
constexpr std::size_t kMinBytes = 1 << 20;
// A chunk is one send and one receive: combined while the next streams in.
constexpr std::size_t kChunkBytes = 4 << 20;
// Scratch kept for reuse, at most (a few DDP buckets' worth).
constexpr std::size_t kPoolBytes = 512 << 20;

}  // namespace

Duplex::Duplex(comm::Communicator* out, comm::Communicator* in, int rank)
    : out_(out), in_(in), rank_(rank) {}

bool Duplex::suits(std::size_t bytes, comm::DataType dt, comm::ReduceOp op) {
  if (bytes < kMinBytes) return false;
  return !(op == comm::ReduceOp::kAvg && comm::accumulates_in_float32(dt, op));
}

std::vector<comm::WorkPtr> Duplex::allreduce(void* buf, void* scratch, std::size_t count,
                                             comm::DataType dt, comm::ReduceOp op) {
  const std::size_t es = comm::dtype_size(dt);
  const std::size_t per_chunk = std::max<std::size_t>(1, kChunkBytes / es);
  const std::size_t chunks = (count + per_chunk - 1) / per_chunk;
  const int peer = 1 - rank_;
  // Halves of each chunk not yet done; the second to finish combines it.
  auto pending = std::make_shared<std::vector<std::atomic<int>>>(chunks);
  for (auto& p : *pending) p.store(2, std::memory_order_relaxed);
  std::vector<comm::WorkPtr> sends, recvs;
  sends.reserve(chunks);
  recvs.reserve(chunks);
  for (std::size_t c = 0; c < chunks; ++c) {
    std::size_t first = c * per_chunk, n = std::min(per_chunk, count - first);
    char* mine = static_cast<char*>(buf) + first * es;
    char* theirs = static_cast<char*>(scratch) + first * es;
    sends.push_back(out_->send(mine, n, dt, peer));
    recvs.push_back(in_->recv(theirs, n, dt, peer));
    // buf is combined in place only once its own send is done with it.
    auto combine = [pending, c, mine, theirs, n, dt, op, rank = rank_](const Status& s) {
      if (!s.is_ok() || (*pending)[c].fetch_sub(1, std::memory_order_acq_rel) != 1) return;
      const void* x0 = rank == 0 ? mine : theirs;
      const void* x1 = rank == 0 ? theirs : mine;
      comm::reduce(dt, op, mine, x0, x1, n);
      if (op == comm::ReduceOp::kAvg) comm::finish_avg(dt, mine, n, 2);
    };
    sends.back()->on_done(combine);
    recvs.back()->on_done(combine);
  }
  // Sends first: a failure on this rank's side is reported before the
  // receive that failed because of it.
  sends.insert(sends.end(), recvs.begin(), recvs.end());
  return sends;
}

at::Tensor Duplex::scratch(std::size_t bytes) {
  std::lock_guard lock(pool_mu_);
  std::size_t held = 0;
  for (const auto& t : pool_) {
    // Only the pool holds it: no call uses it, and none can start to but
    // through this lock.
    if (t.use_count() == 1 && static_cast<std::size_t>(t.numel()) == bytes) return t;
    held += static_cast<std::size_t>(t.numel());
  }
  at::Tensor fresh = at::empty({static_cast<int64_t>(bytes)}, at::kByte);
  if (held + bytes <= kPoolBytes) pool_.push_back(fresh);
  return fresh;
}

}  // namespace kiln::torch_backend
