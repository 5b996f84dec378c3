// What the allreduces that reduce each rank's share of the elements from
// every rank's input at once (direct.cc, cma.cc) have in common.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "kiln/comm/algo/allreduce.h"
#include "kiln/comm/algo/group.h"
#include "kiln/comm/reduce.h"

namespace kiln::comm::algo {

// Staging bytes reduce_share_blocked needs: small enough to stay in L1/L2.
constexpr std::size_t kShareBlockBytes = 16 << 10;
constexpr std::size_t kShareStageBytes = 3 * kShareBlockBytes;

// dst[d][i] = src[0][i] OP ... OP src[n-1][i] for every d, `count` elements,
// one block at a time through `stage` (kShareStageBytes), written to every
// dst with streaming stores and no fence. Any dtype and op (16-bit floats
// accumulate in float32, Note [16-bit floats accumulate in float32]; kAvg
// divides by src.size()). src.size() >= 2.
void reduce_share_blocked(char* stage, const std::vector<const char*>& src,
                          const std::vector<char*>& dst, std::size_t count, DataType t,
                          ReduceOp op);

// Sends `mine` to every peer and receives each peer's into theirs[j]
// (theirs[me] = mine): the offers and the "done" of these algorithms.
template <typename T>
Status exchange(const Env& env, const T& mine, std::vector<T>& theirs) {
  const int n = env.group.size();
  theirs.assign(n, mine);
  std::vector<transport::Request> reqs(2 * n);
  std::vector<transport::Request*> wait;
  for (int j = 0; j < n; ++j) {
    if (j == env.group.me) continue;
    env.group.pair(j).post_send(&mine, sizeof(T), &reqs[2 * j]);
    env.group.pair(j).post_recv(&theirs[j], sizeof(T), &reqs[2 * j + 1]);
    wait.push_back(&reqs[2 * j]);
    wait.push_back(&reqs[2 * j + 1]);
  }
  return env.wait(wait);
}

// The start of every offer these algorithms exchange: which algorithm
// (magic), which operation and how many elements. Ranks that issued
// different dtypes or ops must fail before touching a peer's memory (the
// byte counts would differ), not read past a buffer.
struct OfferHeader {
  std::uint32_t magic;
  std::uint32_t operation;  // dtype << 8 | op
  std::uint64_t count;

  static OfferHeader of(std::uint32_t magic, const AllreduceArgs& a);
  // Rank `rank`'s header (this) against this rank's: an error naming the
  // algorithm (`what`) and the difference when they do not match.
  Status check(const char* what, int rank, const OfferHeader& mine) const;
};
static_assert(sizeof(OfferHeader) == 16, "an OfferHeader has no padding");

// Sends `mine` (an offer starting with an OfferHeader `head`) to every peer,
// receives theirs and checks each header against this rank's.
template <typename Offer>
Status exchange_offers(const Env& env, const char* what, const Offer& mine,
                       std::vector<Offer>& theirs) {
  KILN_RETURN_IF_ERROR(exchange(env, mine, theirs));
  for (int j = 0; j < env.group.size(); ++j) {
    KILN_RETURN_IF_ERROR(theirs[j].head.check(what, j, mine.head));
  }
  return Status::ok();
}

// Tells every peer whether this rank could (`mine` ok) use the peers'
// memory, and returns whether every rank could. The first time this process
// could not, it warns (naming `env.what` and `fallback`, what runs instead).
Result<bool> every_rank_could(const Env& env, const Status& mine, std::atomic<bool>& warned,
                              const char* fallback);

}  // namespace kiln::comm::algo
