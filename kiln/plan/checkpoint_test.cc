#include "kiln/plan/checkpoint.h"

#include <gtest/gtest.h>

#include <cmath>

namespace kiln::plan {
namespace {

TEST(CheckpointTest, YoungInterval) {
  EXPECT_DOUBLE_EQ(young_interval_s(300, 86400), std::sqrt(2.0 * 300 * 86400));
  EXPECT_DOUBLE_EQ(young_interval_s(60, 7200), 929.5160030897804 * 1.0);
}

TEST(CheckpointTest, DalyIntervalFor24HourMtbfAnd5MinuteCheckpoint) {
  // Daly 2006: M = 24 h, δ = 5 min gives about 117 minutes.
  const double tau = daly_interval_s(300, 24 * 3600);
  EXPECT_NEAR(tau / 60, 117, 0.5);
  EXPECT_LT(tau, young_interval_s(300, 24 * 3600));
}

TEST(CheckpointTest, DalyIntervalWhenCheckpointExceedsTwiceMtbf) {
  EXPECT_DOUBLE_EQ(daly_interval_s(5000, 2000), 2000);
}

TEST(CheckpointTest, GoodputPeaksNearDalysInterval) {
  const double c = 60, r = 600, m = 7200;
  const double tau = daly_interval_s(c, m);
  const double best = expected_goodput(tau, c, r, m);
  EXPECT_GT(best, expected_goodput(tau / 2, c, r, m));
  EXPECT_GT(best, expected_goodput(tau * 2, c, r, m));
  EXPECT_GT(best, 0.8);
  EXPECT_LT(best, 1.0);
  // No failures in sight: goodput approaches τ/(τ+C).
  EXPECT_NEAR(expected_goodput(1000, 10, 0, 1e12), 1000.0 / 1010, 1e-6);
}

}  // namespace
}  // namespace kiln::plan
