// Ring allreduce (Patarasuk & Yuan; Gloo's allreduce_ring, NCCL's ring).
#include <cstring>

#include "kiln/comm/algo/allreduce.h"

namespace kiln::comm::algo {

Status allreduce_ring(const Env& env, const AllreduceArgs& a) {
  const int n = env.group.size();
  const int r = env.group.me;
  const std::size_t es = dtype_size(a.dtype);
  auto* recv = static_cast<char*>(a.recv);
  const auto* send = static_cast<const char*>(a.send);
  if (n == 1 || a.count == 0) {
    if (a.send != a.recv) std::memcpy(recv, send, a.count * es);
    return Status::ok();
  }
  Split seg(a.count, n);
  auto& right = env.group.pair((r + 1) % n);
  auto& left = env.group.pair((r - 1 + n) % n);
  Reducer reducer{a.dtype, a.op};

  // Reduce-scatter. The segment received at step s is folded with this
  // rank's own input into recv; the one sent at step s ≥ 1 is the one folded
  // at step s-1, so out-of-place needs no extra copy.
  for (int s = 0; s < n - 1; ++s) {
    int send_idx = (r - s + n) % n;
    int recv_idx = (r - s - 1 + n) % n;
    const char* src = (s == 0 ? send : recv) + seg.offset(send_idx) * es;
    transport::Request sr, rr;
    right.post_send(src, seg.size(send_idx) * es, &sr);
    left.post_recv_reduce(recv + seg.offset(recv_idx) * es, send + seg.offset(recv_idx) * es,
                          seg.size(recv_idx) * es, reducer, &rr);
    KILN_RETURN_IF_ERROR(env.wait({&sr, &rr}));
  }
  int mine = (r + 1) % n;  // the segment this rank now holds fully reduced
  if (a.op == ReduceOp::kAvg) finish_avg(a.dtype, recv + seg.offset(mine) * es, seg.size(mine), n);

  // Allgather the reduced segments.
  for (int s = 0; s < n - 1; ++s) {
    int send_idx = (r + 1 - s + n) % n;
    int recv_idx = (r - s + n) % n;
    transport::Request sr, rr;
    right.post_send(recv + seg.offset(send_idx) * es, seg.size(send_idx) * es, &sr);
    left.post_recv(recv + seg.offset(recv_idx) * es, seg.size(recv_idx) * es, &rr);
    KILN_RETURN_IF_ERROR(env.wait({&sr, &rr}));
  }
  return Status::ok();
}

}  // namespace kiln::comm::algo
