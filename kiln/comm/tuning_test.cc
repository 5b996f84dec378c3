#include "kiln/comm/tuning.h"

#include <gtest/gtest.h>

namespace kiln::comm {
namespace {

constexpr LinkCost kLink{10e-6, 1e9};  // 10 µs, 1 GB/s: round numbers to check by hand

TEST(TuningTest, RingFormsFollowThakur2005) {
  // 4 ranks, 4 MB: all-gather moves 3/4 of the buffer in 3 steps.
  EXPECT_DOUBLE_EQ(ring_allgather_s(4e6, 4, kLink), 3 * 10e-6 + 0.75 * 4e6 / 1e9);
  EXPECT_DOUBLE_EQ(ring_reduce_scatter_s(4e6, 4, kLink), ring_allgather_s(4e6, 4, kLink));
  // All-reduce = reduce-scatter + all-gather.
  EXPECT_DOUBLE_EQ(ring_allreduce_s(4e6, 4, kLink), 2 * ring_allgather_s(4e6, 4, kLink));
  EXPECT_DOUBLE_EQ(p2p_s(1e6, kLink), 10e-6 + 1e-3);
}

TEST(TuningTest, NothingToMoveCostsNothing) {
  EXPECT_EQ(ring_allgather_s(4e6, 1, kLink), 0);
  EXPECT_EQ(ring_allreduce_s(0, 8, kLink), 0);
  EXPECT_EQ(p2p_s(0, kLink), 0);
}

TEST(TuningTest, CostModelRingIsTheSharedFormula) {
  CostModel m;
  EXPECT_DOUBLE_EQ(m.ring(1 << 20, 8, m.tcp), ring_allreduce_s(1 << 20, 8, m.tcp));
  // A zero-byte all-reduce still synchronises: its latency steps remain.
  EXPECT_DOUBLE_EQ(m.ring(0, 8, m.tcp), 14 * m.tcp.alpha_s);
}

TEST(TuningTest, PickFollowsTheCost) {
  CostModel m;
  Topology local{8, 1, 8, false};
  // Tiny buffers are latency-bound: log2(n) steps beat the ring's 2(n-1).
  EXPECT_NE(m.pick_allreduce(8, local), AllreduceAlgo::kRing);
  // Large buffers on a non-power-of-two world: the ring has no fold-in pass.
  Topology six{6, 1, 6, false};
  EXPECT_EQ(m.pick_allreduce(64 << 20, six), AllreduceAlgo::kRing);
}

}  // namespace
}  // namespace kiln::comm
