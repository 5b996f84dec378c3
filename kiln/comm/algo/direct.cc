// Note [Direct allreduce on shared buffers]
// Through the shm FIFOs every byte a peer needs is copied into a slot by
// one core and out of it by another: with the input read and the output
// written, a 2-rank ring moves each rank's every message byte about four
// times (8 half-buffer passes), and on this project's hosts that runs at
// half the memory limit of `kiln bench comm` (issue 24; bench/shm_ring.c
// shows a plain ring does no better). When every rank's send and receive
// buffers are SharedBuffers, peers can reach them directly, as NCCL's
// registered buffers: rank r reduces its share of the elements (Split) from
// every rank's input and writes the result into every rank's output with
// streaming stores. Each rank then reads and writes its message once (2
// passes) and nothing is copied between cores.
//
// Protocol, all over the pairs (so an abort or a dead peer fails it as any
// collective): (1) every rank sends every peer an offer (its regions, or
// none); sending it also says "my input is ready and my output free". (2) If
// any rank has none, every rank returns false and the caller runs its usual
// algorithm: all ranks saw the same offers, so all agree. (3) Each rank maps
// the peers' regions, reduces its share, fences its streaming stores and
// sends every peer a done message; (4) it returns once every peer's done has
// come, so no rank leaves while a peer still reads its input or writes its
// output. In place is safe: share r of any buffer is read and then written
// by rank r alone, block by block.
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "kiln/comm/algo/allreduce.h"
#include "kiln/comm/shared_buffer.h"

namespace kiln::comm::algo {
namespace {

constexpr std::uint32_t kOfferMagic = 0x4b444952;  // "KDIR"

struct Offer {
  std::uint32_t magic;
  std::uint32_t usable;  // 1: send and recv below are SharedBuffer regions
  std::uint64_t count;
  SharedRegion send;
  SharedRegion recv;
};

// Reduction of one block at a time through a cache-sized staging buffer,
// then copied into every output: any dtype and op.
constexpr std::size_t kBlockBytes = 16 << 10;

void reduce_share_blocked(const Env& env, const std::vector<const char*>& src,
                          const std::vector<char*>& dst, std::size_t count, DataType t,
                          ReduceOp op) {
  const int n = static_cast<int>(src.size());
  const std::size_t es = dtype_size(t);
  const bool wide = accumulates_in_float32(t, op);  // Note [16-bit floats accumulate in float32]
  const std::size_t per_block = kBlockBytes / (wide ? sizeof(float) : es);
  char* stage = static_cast<char*>(env.scratch->get(3 * kBlockBytes));
  auto* acc = reinterpret_cast<float*>(stage);
  auto* next = reinterpret_cast<float*>(stage + kBlockBytes);
  char* narrow = stage + 2 * kBlockBytes;
  for (std::size_t i = 0; i < count; i += per_block) {
    const std::size_t k = std::min(per_block, count - i);
    const char* out = stage;
    if (wide) {
      widen_to_float32(t, src[0] + i * es, acc, k);
      for (int j = 1; j < n; ++j) {
        widen_to_float32(t, src[j] + i * es, next, k);
        reduce(DataType::kFloat32, op, acc, acc, next, k);
      }
      if (op == ReduceOp::kAvg) finish_avg(DataType::kFloat32, acc, k, n);
      narrow_from_float32(t, acc, narrow, k);
      out = narrow;
    } else {
      reduce(t, op, stage, src[0] + i * es, src[1] + i * es, k);
      for (int j = 2; j < n; ++j) reduce(t, op, stage, stage, src[j] + i * es, k);
      if (op == ReduceOp::kAvg) finish_avg(t, stage, k, n);
    }
    for (char* d : dst) copy_streaming(d + i * es, out, k * es, /*fence=*/false);
  }
}

}  // namespace

Result<bool> allreduce_direct(const Env& env, const AllreduceArgs& a) {
  const int n = env.group.size();
  const int me = env.group.me;
  const std::size_t es = dtype_size(a.dtype);
  const std::size_t bytes = a.count * es;
  Offer mine{kOfferMagic, 0, a.count, {}, {}};
  auto send = find_shared_region(a.send, bytes);
  auto recv = find_shared_region(a.recv, bytes);
  if (send && recv) mine = Offer{kOfferMagic, 1, a.count, *send, *recv};

  std::vector<Offer> offers(n);
  offers[me] = mine;
  {
    std::vector<transport::Request> reqs(2 * n);
    std::vector<transport::Request*> wait;
    for (int j = 0; j < n; ++j) {
      if (j == me) continue;
      env.group.pair(j).post_send(&mine, sizeof mine, &reqs[2 * j]);
      env.group.pair(j).post_recv(&offers[j], sizeof(Offer), &reqs[2 * j + 1]);
      wait.push_back(&reqs[2 * j]);
      wait.push_back(&reqs[2 * j + 1]);
    }
    KILN_RETURN_IF_ERROR(env.wait(wait));
  }
  bool usable = true;
  for (int j = 0; j < n; ++j) {
    if (offers[j].magic != kOfferMagic || offers[j].count != a.count) {
      return invalid_argument(fmt::format(
          "direct allreduce: rank {} of the group offered {} elements where this rank has {} "
          "(the ranks issued different operations or counts)",
          j, offers[j].count, a.count));
    }
    usable = usable && offers[j].usable == 1;
  }
  if (!usable) return false;

  std::vector<const char*> src(n);
  std::vector<char*> dst(n);
  for (int j = 0; j < n; ++j) {
    if (j == me) {
      src[j] = static_cast<const char*>(a.send);
      dst[j] = static_cast<char*>(a.recv);
      continue;
    }
    KILN_ASSIGN_OR_RETURN(void* s, env.group.pair(j).map_peer_region(offers[j].send));
    KILN_ASSIGN_OR_RETURN(void* d, env.group.pair(j).map_peer_region(offers[j].recv));
    src[j] = static_cast<const char*>(s);
    dst[j] = static_cast<char*>(d);
  }
  const Split share(a.count, n);
  const std::size_t off = share.offset(me) * es, k = share.size(me);
  for (auto& p : src) p += off;
  for (auto& p : dst) p += off;
  const bool two_float32_sums = n == 2 && a.dtype == DataType::kFloat32 && a.op == ReduceOp::kSum;
  if (k > 0 && !(two_float32_sums &&
                 add_float32_streaming_to_two(reinterpret_cast<float*>(dst[0]),
                                              reinterpret_cast<float*>(dst[1]),
                                              reinterpret_cast<const float*>(src[0]),
                                              reinterpret_cast<const float*>(src[1]), k))) {
    reduce_share_blocked(env, src, dst, k, a.dtype, a.op);
  }
  // The results are in every output before any peer hears we are done.
  streaming_fence();

  std::uint8_t done_out = 1;
  std::vector<std::uint8_t> done_in(n);
  std::vector<transport::Request> reqs(2 * n);
  std::vector<transport::Request*> wait;
  for (int j = 0; j < n; ++j) {
    if (j == me) continue;
    env.group.pair(j).post_send(&done_out, 1, &reqs[2 * j]);
    env.group.pair(j).post_recv(&done_in[j], 1, &reqs[2 * j + 1]);
    wait.push_back(&reqs[2 * j]);
    wait.push_back(&reqs[2 * j + 1]);
  }
  KILN_RETURN_IF_ERROR(env.wait(wait));
  return true;
}

}  // namespace kiln::comm::algo
