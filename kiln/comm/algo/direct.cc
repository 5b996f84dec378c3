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
// the peers' regions and tells every peer whether it could (a peer in
// another pid namespace, or one that is not dumpable, cannot be reached
// through /proc): if any could not, all fall back, the one that could not
// with a warning. (4) Each rank reduces its share, fences its streaming
// stores and sends every peer a done message; (5) it returns once every
// peer's done has come, so no rank leaves while a peer still reads its input
// or writes its output. In place is safe: share r of any buffer is read and
// then written by rank r alone, block by block.
#include <atomic>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "kiln/base/logging.h"
#include "kiln/comm/algo/allreduce.h"
#include "kiln/comm/algo/share.h"
#include "kiln/comm/shared_buffer.h"

namespace kiln::comm::algo {
namespace {

constexpr std::uint32_t kOfferMagic = 0x4b444952;  // "KDIR"

// A SharedRegion as it travels: no padding, so every byte sent is set.
struct WireRegion {
  std::int32_t fd;
  std::int32_t unused;
  std::uint64_t serial, buffer_bytes, offset;

  static WireRegion of(const SharedRegion& r) {
    return {r.fd, 0, r.serial, r.buffer_bytes, r.offset};
  }
  SharedRegion region() const { return {fd, serial, buffer_bytes, offset}; }
};

struct Offer {
  std::uint32_t magic;
  std::uint16_t usable;     // 1: send and recv below are SharedBuffer regions
  std::uint16_t operation;  // operation_code(dtype, op): fits 16 bits
  std::uint64_t count;
  WireRegion send;
  WireRegion recv;
};
static_assert(sizeof(Offer) == 80, "an Offer has no padding");

}  // namespace

Result<bool> allreduce_direct(const Env& env, const AllreduceArgs& a) {
  const int n = env.group.size();
  const int me = env.group.me;
  const std::size_t es = dtype_size(a.dtype);
  const std::size_t bytes = a.count * es;
  Offer mine{};
  mine.magic = kOfferMagic;
  mine.count = a.count;
  mine.operation = static_cast<std::uint16_t>(operation_code(a.dtype, a.op));
  auto send = find_shared_region(a.send, bytes);
  auto recv = find_shared_region(a.recv, bytes);
  if (send && recv) {
    mine.usable = 1;
    mine.send = WireRegion::of(*send);
    mine.recv = WireRegion::of(*recv);
  }
  std::vector<Offer> offers;
  KILN_RETURN_IF_ERROR(exchange(env, mine, offers));
  bool usable = true;
  for (int j = 0; j < n; ++j) {
    KILN_RETURN_IF_ERROR(check_offer("direct allreduce", j, offers[j].magic, kOfferMagic,
                                     offers[j].count, a.count, offers[j].operation,
                                     mine.operation));
    usable = usable && offers[j].usable == 1;
  }
  if (!usable) return false;

  std::vector<const char*> src(n);
  std::vector<char*> dst(n);
  Status mapped = Status::ok();
  for (int j = 0; j < n && mapped.is_ok(); ++j) {
    if (j == me) {
      src[j] = static_cast<const char*>(a.send);
      dst[j] = static_cast<char*>(a.recv);
      continue;
    }
    auto s = env.group.pair(j).map_peer_region(offers[j].send.region());
    auto d = s.is_ok() ? env.group.pair(j).map_peer_region(offers[j].recv.region()) : s;
    mapped = !s.is_ok() ? s.status() : d.status();
    if (mapped.is_ok()) {
      src[j] = static_cast<const char*>(*s);
      dst[j] = static_cast<char*>(*d);
    }
  }
  static std::atomic<bool> warned{false};
  KILN_ASSIGN_OR_RETURN(bool all_could,
                        every_rank_could(env, mapped, warned,
                                         "shared buffers not used, running the usual allreduce"));
  if (!all_could) return false;
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
    reduce_share_blocked(static_cast<char*>(env.scratch->get(kShareStageBytes)), src, dst, k,
                         a.dtype, a.op);
  }
  // The results are in every output before any peer hears we are done.
  streaming_fence();

  std::vector<std::uint8_t> done;
  KILN_RETURN_IF_ERROR(exchange(env, std::uint8_t{1}, done));
  return true;
}

}  // namespace kiln::comm::algo
