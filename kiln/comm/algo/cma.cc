// Note [Single-copy allreduce through the kernel]
// The direct allreduce (Note [Direct allreduce on shared buffers]) needs
// every buffer to be a SharedBuffer; user memory goes through the shm FIFOs,
// where each byte a peer needs is copied into a slot by one core and out of
// it by another, and that bounds a 2-rank ring near half the memory limit.
// Cross-memory attach (process_vm_readv, as Open MPI's vader/sm BTL uses
// for large messages) copies straight from a peer's address space: the
// kernel pins the peer's pages and copies them once, with no slot between.
//
// Two phases, each touching a byte as few times as it can. Reduce-scatter:
// rank r reads its share (Split) of every peer's input in pieces small
// enough to stay in L2 (kPieceBytes) into staging, and reduces them with its
// own input into its own output with streaming stores: the peers' bytes
// cross memory once, into the cache. Allgather: rank r reads each peer's
// reduced share into staging and streams it into its own output (streaming
// stores skip the read for ownership that a copy straight into the output
// would cost). Per rank of 2 that is 2.5 N bytes of memory traffic for N
// bytes, against the ring's 4 N and the direct allreduce's 2 N.
//
// Protocol over the pairs (an abort or a dead peer fails it as any
// collective, naming the peer): (1) every rank sends every peer an offer
// (its buffers' addresses and where a probe lies); sending it also says "my
// input is ready and my output free". (2) Each rank reads every peer's probe
// through the kernel and checks it holds the peer's pid and nonce: that
// proves the kernel lets it (no EPERM from ptrace rules or a seccomp filter,
// no ENOSYS) and that the pid names the peer (not a process of another pid
// namespace). All exchange whether they could; if any could not, every rank
// returns false and the caller runs the ring. (3) Reduce-scatter, fence,
// exchange "reduced": after it every peer's share is in its output and no
// peer reads this rank's input any more, so (4) the allgather may overwrite
// it (in place) while reading the peers' outputs; (5) a last exchange, so no
// rank leaves while a peer still reads its output.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <random>
#include <vector>

#include "kiln/base/logging.h"
#include "kiln/comm/algo/allreduce.h"
#include "kiln/comm/algo/share.h"

namespace kiln::comm::algo {
namespace {

constexpr std::uint32_t kOfferMagic = 0x4b434d41;  // "KCMA"

// What a peer reads to check it reaches this process (step 2).
struct Probe {
  std::uint64_t pid;
  std::uint64_t nonce;
};

// Per process: a forked child gets a fresh one on its first use.
const Probe& probe() {
  static std::mutex mu;
  static Probe p{0, 0};
  std::lock_guard lock(mu);
  const auto pid = static_cast<std::uint64_t>(getpid());
  if (p.pid != pid) p = Probe{pid, std::random_device{}() ^ (pid << 32)};
  return p;
}

struct Offer {
  OfferHeader head;
  std::uint64_t send, recv;  // addresses in the offering process
  std::uint64_t probe_at;
  Probe probe;
};
static_assert(sizeof(Offer) == 56, "an Offer has no padding");

// Staging per peer: the peers' pieces and the reduction's blocks all stay in
// L2 (1 MiB per core on the hosts measured, docs/perf.md).
constexpr std::size_t kStageBudget = 512 << 10;
constexpr std::size_t kMinPieceBytes = 64 << 10;

std::uint64_t address(const void* p) { return reinterpret_cast<std::uint64_t>(p); }

// Step 2: whether the kernel lets this rank read every peer's memory.
Status reach_peers(const Env& env, const std::vector<Offer>& offers) {
  for (int j = 0; j < env.group.size(); ++j) {
    if (j == env.group.me) continue;
    Probe seen{};
    auto& pair = env.group.pair(j);
    KILN_RETURN_IF_ERROR(pair.read_peer_memory(offers[j].probe_at, &seen, sizeof(seen)));
    if (seen.pid != offers[j].probe.pid || seen.nonce != offers[j].probe.nonce) {
      return failed_precondition(fmt::format(
          "{} (pid {}) is not the process this rank reaches by that pid (another pid namespace?)",
          pair.peer_name(), offers[j].probe.pid));
    }
  }
  return Status::ok();
}

}  // namespace

Result<bool> allreduce_cma(const Env& env, const AllreduceArgs& a) {
  const int n = env.group.size();
  const int me = env.group.me;
  const std::size_t es = dtype_size(a.dtype);
  Offer mine{};
  mine.head = OfferHeader::of(kOfferMagic, a);
  mine.send = address(a.send);
  mine.recv = address(a.recv);
  mine.probe = probe();
  mine.probe_at = address(&probe());
  std::vector<Offer> offers;
  KILN_RETURN_IF_ERROR(exchange_offers(env, "single-copy allreduce", mine, offers));
  Status reach = reach_peers(env, offers);
  // A peer gone (or an abort) fails the collective; anything else the kernel
  // says to the probe means this rank cannot use it, and all fall back.
  if (reach.code() == Code::kAborted || reach.code() == Code::kCancelled) return reach;
  static std::atomic<bool> warned{false};
  KILN_ASSIGN_OR_RETURN(
      bool all_could,
      every_rank_could(env, reach, warned,
                       "cross-memory attach not possible, running the usual allreduce"));
  if (!all_could) return false;

  const std::size_t piece_bytes =
      std::max(kMinPieceBytes, kStageBudget / static_cast<std::size_t>(n - 1)) / 64 * 64;
  const std::size_t piece = piece_bytes / es;
  char* scratch = static_cast<char*>(env.scratch->get((n - 1) * piece_bytes + kShareStageBytes));
  char* block_stage = scratch + (n - 1) * piece_bytes;
  const Split share(a.count, n);
  const auto* send = static_cast<const char*>(a.send);
  auto* recv = static_cast<char*>(a.recv);
  const bool wide = accumulates_in_float32(a.dtype, a.op);

  // (3) Reduce-scatter: this rank's share of every input into its output.
  const std::size_t off = share.offset(me), k = share.size(me);
  std::vector<const char*> src(n);
  std::vector<char*> dst(1);
  for (std::size_t i = 0; i < k; i += piece) {
    const std::size_t m = std::min(piece, k - i);
    const std::size_t at = (off + i) * es;
    char* stage = scratch;
    for (int j = 0; j < n; ++j) {
      if (j == me) {
        src[j] = send + at;
        continue;
      }
      KILN_RETURN_IF_ERROR(env.group.pair(j).read_peer_memory(offers[j].send + at, stage, m * es));
      src[j] = stage;
      stage += piece_bytes;
    }
    if (n == 2 && !wide && a.op != ReduceOp::kAvg) {
      reduce_streaming(a.dtype, a.op, recv + at, src[0], src[1], m, /*fence=*/false);
    } else {
      dst[0] = recv + at;
      reduce_share_blocked(block_stage, src, dst, m, a.dtype, a.op);
    }
  }
  streaming_fence();  // the share is in memory before any peer hears it is
  std::vector<std::uint8_t> reduced;
  KILN_RETURN_IF_ERROR(exchange(env, std::uint8_t{1}, reduced));

  // (4) Allgather: every peer's reduced share into this rank's output.
  for (int j = 0; j < n; ++j) {
    if (j == me) continue;
    const std::size_t from = share.offset(j) * es, bytes = share.size(j) * es;
    for (std::size_t i = 0; i < bytes; i += piece_bytes) {
      const std::size_t b = std::min(piece_bytes, bytes - i);
      KILN_RETURN_IF_ERROR(
          env.group.pair(j).read_peer_memory(offers[j].recv + from + i, scratch, b));
      copy_streaming(recv + from + i, scratch, b, /*fence=*/false);
    }
  }
  streaming_fence();
  std::vector<std::uint8_t> done;
  KILN_RETURN_IF_ERROR(exchange(env, std::uint8_t{1}, done));
  return true;
}

}  // namespace kiln::comm::algo
