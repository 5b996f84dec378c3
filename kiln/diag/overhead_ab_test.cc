#include "kiln/diag/overhead_ab.h"

#include <gtest/gtest.h>

namespace kiln::diag {
namespace {

TEST(OverheadAB, DisabledRecordsEveryStep) {
  OverheadAB ab(0);
  EXPECT_FALSE(ab.enabled());
  for (int n = 0; n < 10; ++n) EXPECT_TRUE(ab.recorded(n));
  ab.add(3, 1.0);
  EXPECT_EQ(ab.result().pairs, 0);
}

TEST(OverheadAB, AlternatesBlocksAndComparesEachRecordedBlockWithTheNext) {
  OverheadAB ab(2);
  EXPECT_TRUE(ab.recorded(0));
  EXPECT_TRUE(ab.recorded(1));
  EXPECT_FALSE(ab.recorded(2));
  EXPECT_FALSE(ab.recorded(3));
  EXPECT_TRUE(ab.recorded(4));
  // Steps slow down over the run (drift); recorded steps cost 1% more than
  // the unrecorded ones around them. Pair 0 is warm-up and very slow.
  for (int n = 0; n < 14; ++n) {
    double base = n < 4 ? 5.0 : 1.0 + 0.1 * (n / 4);
    ab.add(n, ab.recorded(n) ? base * 1.01 : base);
  }
  OverheadAB::Result r = ab.result();
  EXPECT_EQ(r.pairs, 2);  // steps 4-7 and 8-11; steps 12-13 have no unrecorded partner
  EXPECT_NEAR(r.ratio, 1.01, 1e-9);
  EXPECT_GT(r.recorded_s, r.unrecorded_s);
}

}  // namespace
}  // namespace kiln::diag
