// Ring allreduce (Patarasuk & Yuan; Gloo's allreduce_ring, NCCL's ring).
#include <cstring>

#include "kiln/comm/algo/allreduce.h"

namespace kiln::comm::algo {
namespace {

// Reduce-scatter around the ring over elements of `es` bytes. The segment
// received at step s is folded with this rank's own input (`send`) into
// `recv`; the one sent at step s ≥ 1 is the one folded at step s-1, so out of
// place needs no extra copy. Ends with segment (r + 1) % n reduced in recv;
// an average's last step also divides it (Note [Averaging in the last
// reduction], reduce.h).
Status reduce_scatter_phase(const Env& env, const Split& seg, const char* send, char* recv,
                            std::size_t es, Reducer reducer) {
  const int n = env.group.size();
  const int r = env.group.me;
  auto& right = env.group.pair((r + 1) % n);
  auto& left = env.group.pair((r - 1 + n) % n);
  for (int s = 0; s < n - 1; ++s) {
    int send_idx = (r - s + n) % n;
    int recv_idx = (r - s - 1 + n) % n;
    const char* src = (s == 0 ? send : recv) + seg.offset(send_idx) * es;
    transport::Request sr, rr;
    right.post_send(src, seg.size(send_idx) * es, &sr);
    Reducer step = reducer;
    if (s == n - 2 && reducer.op == ReduceOp::kAvg) step.then_divide_by = n;
    left.post_recv_reduce(recv + seg.offset(recv_idx) * es, send + seg.offset(recv_idx) * es,
                          seg.size(recv_idx) * es, step, &rr);
    KILN_RETURN_IF_ERROR(env.wait({&sr, &rr}));
  }
  return Status::ok();
}

// Allgather of the reduced segments, each rank starting from its own.
Status allgather_phase(const Env& env, const Split& seg, char* recv, std::size_t es) {
  const int n = env.group.size();
  const int r = env.group.me;
  auto& right = env.group.pair((r + 1) % n);
  auto& left = env.group.pair((r - 1 + n) % n);
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

}  // namespace

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
  const int mine = (r + 1) % n;  // the segment this rank holds fully reduced after the first phase
  if (!accumulates_in_float32(a.dtype, a.op)) {
    KILN_RETURN_IF_ERROR(reduce_scatter_phase(env, seg, send, recv, es, Reducer{a.dtype, a.op}));
    return allgather_phase(env, seg, recv, es);
  }
  // Note [16-bit floats accumulate in float32]: the partial sums go round
  // the ring as float32; each rank rounds its finished segment once, and the
  // allgather moves 16-bit values (reduce-scatter at 4 bytes an element,
  // allgather at 2: 3/4 of a float32 allreduce's traffic).
  auto* wide = static_cast<float*>(env.scratch->get(a.count * sizeof(float), Scratch::kWide));
  widen_to_float32(a.dtype, send, wide, a.count);
  auto* w = reinterpret_cast<char*>(wide);
  KILN_RETURN_IF_ERROR(
      reduce_scatter_phase(env, seg, w, w, sizeof(float), Reducer{DataType::kFloat32, a.op}));
  const float* done = wide + seg.offset(mine);
  narrow_from_float32(a.dtype, done, recv + seg.offset(mine) * es, seg.size(mine));
  return allgather_phase(env, seg, recv, es);
}

}  // namespace kiln::comm::algo
