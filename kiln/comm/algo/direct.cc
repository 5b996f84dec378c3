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
#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "kiln/base/logging.h"
#include "kiln/comm/algo/allreduce.h"
#include "kiln/comm/algo/share.h"
#include "kiln/comm/shared_buffer.h"
#include "kiln/comm/shared_in_place.h"

namespace kiln::comm::algo {
namespace {

constexpr std::uint32_t kOfferMagic = 0x4b444952;  // "KDIR"

// A SharedRegion as it travels: no padding, so every byte sent is set.
struct WireRegion {
  std::int32_t fd;
  std::uint32_t in_place;
  std::uint64_t serial, buffer_bytes, offset;

  static WireRegion of(const SharedRegion& r) {
    return {r.fd, r.in_place ? 1u : 0u, r.serial, r.buffer_bytes, r.offset};
  }
  SharedRegion region() const {
    SharedRegion r{fd, serial, buffer_bytes, offset};
    r.in_place = in_place == 1;
    return r;
  }
};

struct Offer {
  OfferHeader head;
  // Elements [first, end) reach through both send and recv below, which
  // start at element `first`; first == end: none.
  std::uint64_t first, end;
  WireRegion send;
  WireRegion recv;
  // Serials of the offering rank's in-place shares still live (Note
  // [Sharing user memory in place]): peers unmap the others.
  std::uint64_t live_count;
  std::uint64_t live[kMaxInPlaceShares];
};
static_assert(sizeof(Offer) == 104 + 8 * kMaxInPlaceShares, "an Offer has no padding");

// Elements [first, end) of a buffer that peers can reach, through `region`
// at element `first`.
struct Reach {
  std::uint64_t first = 0, end = 0;
  SharedRegion region;

  // The region at element `e` (first <= e < end).
  SharedRegion at(std::uint64_t e, std::size_t es) const {
    SharedRegion r = region;
    r.offset += (e - first) * es;
    return r;
  }
};

// All of a buffer inside a SharedBuffer; else, where allowed, the elements
// on its pages shared in place.
std::optional<Reach> reach(const void* p, std::size_t count, std::size_t es, bool in_place) {
  if (auto r = find_shared_region(p, count * es)) return Reach{0, count, *r};
  if (!in_place) return std::nullopt;
  auto span = share_in_place(p, count * es);
  if (!span) return std::nullopt;
  const auto* base = static_cast<const char*>(p);
  const std::uint64_t first = (span->begin - base + es - 1) / es, end = (span->end - base) / es;
  if (end <= first) return std::nullopt;
  Reach r{first, end, span->region};
  r.region.offset += base + first * es - span->begin;
  return r;
}

}  // namespace

Result<DirectPath> allreduce_direct(const Env& env, const AllreduceArgs& a,
                                    const DirectOptions& o) {
  const int n = env.group.size();
  const int me = env.group.me;
  const std::size_t es = dtype_size(a.dtype);
  const std::size_t bytes = a.count * es;
  const bool in_place_ok = o.share_in_place_from_bytes > 0 && bytes >= o.share_in_place_from_bytes;
  Offer mine{};
  mine.head = OfferHeader::of(kOfferMagic, a);
  auto send = reach(a.send, a.count, es, in_place_ok);
  auto recv = a.recv == a.send ? send : reach(a.recv, a.count, es, in_place_ok);
  if (send && recv) {
    mine.first = std::max(send->first, recv->first);
    mine.end = std::max(mine.first, std::min(send->end, recv->end));
    if (mine.first < mine.end) {
      mine.send = WireRegion::of(send->at(mine.first, es));
      mine.recv = WireRegion::of(recv->at(mine.first, es));
    }
  }
  const auto live = live_in_place_serials();
  mine.live_count = live.size();
  std::copy(live.begin(), live.end(), mine.live);
  std::vector<Offer> offers;
  KILN_RETURN_IF_ERROR(exchange_offers(env, "direct allreduce", mine, offers));
  std::uint64_t lo = 0, hi = a.count;
  for (int j = 0; j < n; ++j) {
    if (j != me) {
      const std::uint64_t k = std::min<std::uint64_t>(offers[j].live_count, kMaxInPlaceShares);
      env.group.pair(j).forget_peer_in_place_regions_except(
          std::vector<std::uint64_t>(offers[j].live, offers[j].live + k));
    }
    lo = std::max(lo, offers[j].first);
    hi = std::min(hi, offers[j].end);
  }
  if (hi <= lo) return DirectPath::kNotRun;

  // Every rank's send and recv at element `lo`.
  std::vector<const char*> src(n);
  std::vector<char*> dst(n);
  Status mapped = Status::ok();
  for (int j = 0; j < n && mapped.is_ok(); ++j) {
    if (j == me) {
      src[j] = static_cast<const char*>(a.send) + lo * es;
      dst[j] = static_cast<char*>(a.recv) + lo * es;
      continue;
    }
    auto s = env.group.pair(j).map_peer_region(offers[j].send.region());
    auto d = s.is_ok() ? env.group.pair(j).map_peer_region(offers[j].recv.region()) : s;
    mapped = !s.is_ok() ? s.status() : d.status();
    if (mapped.is_ok()) {
      // The peer's regions start at its element `first`.
      src[j] = static_cast<const char*>(*s) + (lo - offers[j].first) * es;
      dst[j] = static_cast<char*>(*d) + (lo - offers[j].first) * es;
    }
  }
  static std::atomic<bool> warned{false};
  KILN_ASSIGN_OR_RETURN(bool all_could,
                        every_rank_could(env, mapped, warned,
                                         "shared buffers not used, running the usual allreduce"));
  if (!all_could) return DirectPath::kNotRun;
  const Split share(hi - lo, n);
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

  // The elements some rank cannot reach, the usual way.
  const auto* in = static_cast<const char*>(a.send);
  auto* out = static_cast<char*>(a.recv);
  if (lo > 0) KILN_RETURN_IF_ERROR(o.usual(env, {in, out, lo, a.dtype, a.op}));
  if (hi < a.count) {
    KILN_RETURN_IF_ERROR(o.usual(env, {in + hi * es, out + hi * es, a.count - hi, a.dtype, a.op}));
  }
  const bool shared_in_place = mine.send.in_place == 1 || mine.recv.in_place == 1;
  return shared_in_place ? DirectPath::kSharedInPlace : DirectPath::kSharedBuffers;
}

}  // namespace kiln::comm::algo
