// Binomial-tree broadcast and reduce (MPICH's MPIR_Bcast_binomial and
// MPIR_Reduce_binomial), over member indices relative to the root.
#include <cstring>
#include <memory>

#include "kiln/comm/algo/collectives.h"

namespace kiln::comm::algo {

Status broadcast_tree(const Env& env, void* buf, std::size_t bytes, int root) {
  const int n = env.group.size();
  if (n == 1 || bytes == 0) return Status::ok();
  const int rel = (env.group.me - root + n) % n;
  auto member = [&](int rel_index) { return (rel_index + root) % n; };
  int mask = 1;
  while (mask < n) {
    if (rel & mask) {
      transport::Request rr;
      env.group.pair(member(rel - mask)).post_recv(buf, bytes, &rr);
      KILN_RETURN_IF_ERROR(env.wait({&rr}));
      break;
    }
    mask <<= 1;
  }
  // Children are at rel + mask' for every mask' below the bit we received on.
  std::unique_ptr<transport::Request[]> reqs(new transport::Request[32]);
  std::vector<transport::Request*> posted;
  for (mask >>= 1; mask > 0; mask >>= 1) {
    if (rel + mask < n) {
      transport::Request* r = &reqs[posted.size()];
      env.group.pair(member(rel + mask)).post_send(buf, bytes, r);
      posted.push_back(r);
    }
  }
  return env.wait(posted);
}

Status reduce_tree(const Env& env, const void* send, void* recv, std::size_t count, DataType dtype,
                   ReduceOp op, int root) {
  const int n = env.group.size();
  const std::size_t bytes = count * dtype_size(dtype);
  const bool is_root = env.group.me == root;
  if (count == 0) return Status::ok();
  if (accumulates_in_float32(dtype, op)) {  // Note [16-bit floats accumulate in float32]
    auto* wide = static_cast<float*>(env.scratch->get(count * sizeof(float), Scratch::kWide));
    widen_to_float32(dtype, send, wide, count);
    KILN_RETURN_IF_ERROR(reduce_tree(env, wide, wide, count, DataType::kFloat32, op, root));
    if (is_root) narrow_from_float32(dtype, wide, recv, count);
    return Status::ok();
  }
  // The running sum lives in recv on the root, in scratch elsewhere.
  void* acc = is_root ? recv : env.scratch->get(bytes);
  const void* local = send;
  const int rel = (env.group.me - root + n) % n;
  auto member = [&](int rel_index) { return (rel_index + root) % n; };
  Reducer reducer{dtype, op};
  bool folded = false;
  for (int mask = 1; mask < n; mask <<= 1) {
    if ((rel & mask) == 0) {
      int child = rel | mask;
      if (child < n) {
        transport::Request rr;
        env.group.pair(member(child)).post_recv_reduce(acc, local, bytes, reducer, &rr);
        KILN_RETURN_IF_ERROR(env.wait({&rr}));
        local = acc;
        folded = true;
      }
    } else {
      transport::Request sr;
      env.group.pair(member(rel & ~mask)).post_send(folded ? acc : send, bytes, &sr);
      return env.wait({&sr});
    }
  }
  // Only the root gets here.
  if (!folded && send != recv) std::memcpy(recv, send, bytes);
  if (op == ReduceOp::kAvg) finish_avg(dtype, recv, count, n);
  return Status::ok();
}

}  // namespace kiln::comm::algo
