// Ring allgather (uneven blocks), ring reduce-scatter, pairwise all-to-all
// and the dissemination barrier.
#include <cstring>
#include <numeric>

#include "kiln/comm/algo/collectives.h"

namespace kiln::comm::algo {

Status allgather_ring(const Env& env, const void* send, void* recv,
                      const std::vector<std::size_t>& counts, std::size_t es) {
  const int n = env.group.size();
  const int r = env.group.me;
  std::vector<std::size_t> offset(n + 1, 0);
  for (int i = 0; i < n; ++i) offset[i + 1] = offset[i] + counts[i];
  auto* out = static_cast<char*>(recv);
  if (send != out + offset[r] * es) std::memcpy(out + offset[r] * es, send, counts[r] * es);
  if (n == 1) return Status::ok();
  auto& right = env.group.pair((r + 1) % n);
  auto& left = env.group.pair((r - 1 + n) % n);
  for (int s = 0; s < n - 1; ++s) {
    int send_idx = (r - s + n) % n;
    int recv_idx = (r - s - 1 + n) % n;
    transport::Request sr, rr;
    right.post_send(out + offset[send_idx] * es, counts[send_idx] * es, &sr);
    left.post_recv(out + offset[recv_idx] * es, counts[recv_idx] * es, &rr);
    KILN_RETURN_IF_ERROR(env.wait({&sr, &rr}));
  }
  return Status::ok();
}

namespace {

// Note [A ring's first hop is 16 bits]: the float32 partials of Note [16-bit
// floats accumulate in float32] (reduce.h) exist only from the first
// addition on. A ring reduce-scatter's first hop sends each rank's own
// input, which is exact in 16 bits, so it travels as 16 bits and is widened
// where it lands; only the partials of hops 2..n-1 travel as float32. On 2
// ranks (the only hop is the first) the wire carries 2 bytes an element, not
// 4, and the sums are bit for bit those of widening everything up front.
Status reduce_scatter_ring_16bit(const Env& env, const void* send, void* recv, std::size_t count,
                                 DataType dtype, ReduceOp op) {
  const int n = env.group.size();
  const int r = env.group.me;
  const std::size_t es = dtype_size(dtype);
  const auto* in = static_cast<const char*>(send);
  auto& right = env.group.pair((r + 1) % n);
  auto& left = env.group.pair((r - 1 + n) % n);
  // Scratch: two float32 partials that alternate, this rank's block widened,
  // and the 16-bit block the first hop brings.
  auto* wide =
      static_cast<float*>(env.scratch->get(3 * count * sizeof(float) + count * es, Scratch::kWide));
  float* partial[2] = {wide, wide + count};
  float* local = wide + 2 * count;
  auto* narrow_in = reinterpret_cast<char*>(wide + 3 * count);
  {
    const int send_idx = (r - 1 + n) % n;
    const int recv_idx = (r - 2 + 2 * n) % n;
    transport::Request sr, rr;
    right.post_send(in + send_idx * count * es, count * es, &sr);
    left.post_recv(narrow_in, count * es, &rr);
    widen_to_float32(dtype, in + recv_idx * count * es, local, count);  // while the hop runs
    KILN_RETURN_IF_ERROR(env.wait({&sr, &rr}));
    widen_to_float32(dtype, narrow_in, partial[0], count);
    reduce(DataType::kFloat32, op, partial[0], local, partial[0], count);
  }
  const Reducer reducer{DataType::kFloat32, op};
  for (int s = 1; s < n - 1; ++s) {
    const int recv_idx = (r - s - 2 + 2 * n) % n;
    widen_to_float32(dtype, in + recv_idx * count * es, local, count);
    transport::Request sr, rr;
    right.post_send(partial[(s - 1) % 2], count * sizeof(float), &sr);
    left.post_recv_reduce(partial[s % 2], local, count * sizeof(float), reducer, &rr);
    KILN_RETURN_IF_ERROR(env.wait({&sr, &rr}));
  }
  float* result = partial[(n - 2) % 2];
  if (op == ReduceOp::kAvg) finish_avg(DataType::kFloat32, result, count, n);
  narrow_from_float32(dtype, result, recv, count);
  return Status::ok();
}

}  // namespace

Status reduce_scatter_ring(const Env& env, const void* send, void* recv, std::size_t count,
                           DataType dtype, ReduceOp op) {
  const int n = env.group.size();
  const int r = env.group.me;
  const std::size_t es = dtype_size(dtype);
  const std::size_t bytes = count * es;
  const auto* in = static_cast<const char*>(send);
  if (n == 1 || count == 0) {
    if (send != recv) std::memmove(recv, send, bytes);
    return Status::ok();
  }
  if (accumulates_in_float32(dtype, op))
    return reduce_scatter_ring_16bit(env, send, recv, count, dtype, op);
  auto& right = env.group.pair((r + 1) % n);
  auto& left = env.group.pair((r - 1 + n) % n);
  Reducer reducer{dtype, op};
  // Two block-sized buffers alternate: the block folded at step s-1 is sent
  // at step s while step s folds into the other. The last fold lands in recv.
  auto* partial = static_cast<char*>(env.scratch->get(2 * bytes));
  const char* outgoing = nullptr;
  for (int s = 0; s < n - 1; ++s) {
    int send_idx = (r - s - 1 + 2 * n) % n;
    int recv_idx = (r - s - 2 + 2 * n) % n;
    const char* src = s == 0 ? in + send_idx * bytes : outgoing;
    char* dst = (s == n - 2) ? static_cast<char*>(recv) : partial + (s % 2) * bytes;
    transport::Request sr, rr;
    right.post_send(src, bytes, &sr);
    left.post_recv_reduce(dst, in + recv_idx * bytes, bytes, reducer, &rr);
    KILN_RETURN_IF_ERROR(env.wait({&sr, &rr}));
    outgoing = dst;
  }
  if (op == ReduceOp::kAvg) finish_avg(dtype, recv, count, n);
  return Status::ok();
}

Status alltoall_pairwise(const Env& env, const void* send, void* recv, std::size_t bytes) {
  const int n = env.group.size();
  const int r = env.group.me;
  const auto* in = static_cast<const char*>(send);
  auto* out = static_cast<char*>(recv);
  std::memcpy(out + r * bytes, in + r * bytes, bytes);
  for (int s = 1; s < n; ++s) {
    int to = (r + s) % n;
    int from = (r - s + n) % n;
    transport::Request sr, rr;
    env.group.pair(to).post_send(in + to * bytes, bytes, &sr);
    env.group.pair(from).post_recv(out + from * bytes, bytes, &rr);
    KILN_RETURN_IF_ERROR(env.wait({&sr, &rr}));
  }
  return Status::ok();
}

Status barrier_dissemination(const Env& env) {
  const int n = env.group.size();
  const int r = env.group.me;
  char out = 1, in = 0;
  for (int dist = 1; dist < n; dist <<= 1) {
    transport::Request sr, rr;
    env.group.pair((r + dist) % n).post_send(&out, 1, &sr);
    env.group.pair((r - dist + n) % n).post_recv(&in, 1, &rr);
    KILN_RETURN_IF_ERROR(env.wait({&sr, &rr}));
  }
  return Status::ok();
}

}  // namespace kiln::comm::algo
