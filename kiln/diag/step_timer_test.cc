#include "kiln/diag/step_timer.h"

#include <gtest/gtest.h>

#include <chrono>

namespace kiln::diag {
namespace {

// Busy-waits so the phase really takes at least `s` seconds of wall time.
void spin(double s) {
  auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(s);
  while (std::chrono::steady_clock::now() < until) {
  }
}

double sum_phases(const StepRecord &r) {
  double t = 0;
  for (double v : r.phase_s) t += v;
  return t;
}

TEST(PhaseName, RoundTripsEveryPhase) {
  for (int i = 0; i < kPhaseCount; ++i) {
    auto p = static_cast<Phase>(i);
    EXPECT_EQ(phase_from_name(phase_name(p)), p);
  }
  EXPECT_STREQ(phase_name(Phase::kCheckpointStall), "ckpt_stall");
  EXPECT_STREQ(phase_name(Phase::kExposedComm), "exposed_comm");
  EXPECT_EQ(phase_from_name("nope"), std::nullopt);
}

TEST(StepTimer, PhasesAndOtherAddUpToStepTime) {
  StepTimer t(3);
  t.begin_step(42);
  {
    auto s = t.phase(Phase::kDataWait);
    spin(0.004);
  }
  {
    auto s = t.phase(Phase::kForward);
    spin(0.006);
  }
  spin(0.003);  // untimed: lands in "other"
  t.current().comm_bytes = 1234;
  StepRecord r = t.end_step(0.5, 64);
  EXPECT_EQ(r.step, 42);
  EXPECT_EQ(r.rank, 3);
  EXPECT_EQ(r.samples, 64u);
  EXPECT_EQ(r.loss, 0.5);
  EXPECT_EQ(r.comm_bytes, 1234u);
  EXPECT_GE(r[Phase::kDataWait], 0.004);
  EXPECT_GE(r[Phase::kForward], 0.006);
  EXPECT_GE(r[Phase::kOther], 0.003);
  EXPECT_EQ(r[Phase::kBackward], 0.0);
  EXPECT_NEAR(sum_phases(r), r.step_s, 1e-9);
  EXPECT_GT(r.start_unix_s, 1.6e9);
  ASSERT_EQ(r.spans.size(), 2u);
  EXPECT_EQ(r.spans[0].phase, Phase::kDataWait);
  EXPECT_EQ(r.spans[1].phase, Phase::kForward);
  EXPECT_GE(r.spans[1].begin_s, r.spans[0].begin_s + r.spans[0].dur_s);
}

TEST(StepTimer, NestedScopeTimeIsTakenOutOfTheEnclosingPhase) {
  StepTimer t(0);
  t.begin_step(1);
  {
    auto opt = t.phase(Phase::kOptimizer);
    spin(0.002);
    {
      auto ck = t.phase(Phase::kCheckpointStall);
      spin(0.010);
    }
  }
  StepRecord r = t.end_step(0, 0);
  EXPECT_GE(r[Phase::kCheckpointStall], 0.010);
  EXPECT_GE(r[Phase::kOptimizer], 0.002);
  // Without the subtraction the optimizer would carry the 10 ms stall too.
  EXPECT_LT(r[Phase::kOptimizer], 0.010);
  EXPECT_NEAR(sum_phases(r), r.step_s, 1e-9);
  // The trace keeps inclusive spans: the stall ends first and sits inside.
  ASSERT_EQ(r.spans.size(), 2u);
  EXPECT_EQ(r.spans[0].phase, Phase::kCheckpointStall);
  EXPECT_GE(r.spans[1].dur_s, r.spans[0].dur_s);
}

TEST(StepTimer, AddedTimeCountsInTotalsAndOtherNeverGoesNegative) {
  StepTimer t(0);
  t.begin_step(1);
  t.add(Phase::kExposedComm, 5.0);  // more than the step's wall time
  t.add(Phase::kOther, 7.0);        // derived, ignored
  t.add(Phase::kForward, -1.0);     // nonsense, ignored
  StepRecord r = t.end_step(0, 0);
  EXPECT_EQ(r[Phase::kExposedComm], 5.0);
  EXPECT_EQ(r[Phase::kForward], 0.0);
  EXPECT_EQ(r[Phase::kOther], 0.0);
  EXPECT_LT(r.step_s, 5.0);
  EXPECT_TRUE(r.spans.empty());
}

TEST(StepTimer, AddInsideAScopeIsNotCountedTwice) {
  StepTimer t(0);
  t.begin_step(1);
  {
    auto s = t.phase(Phase::kBackward);
    spin(0.004);
    t.add(Phase::kExposedComm, 0.003);  // measured by the caller within backward
  }
  StepRecord r = t.end_step(0, 0);
  EXPECT_EQ(r[Phase::kExposedComm], 0.003);
  EXPECT_GE(r[Phase::kBackward], 0.0009);
  EXPECT_NEAR(sum_phases(r), r.step_s, 1e-9);
}

TEST(StepTimer, EachStepStartsFromZero) {
  StepTimer t(1);
  t.begin_step(1);
  {
    auto s = t.phase(Phase::kForward);
    spin(0.002);
  }
  t.current().cache_hit_rate = 0.5;
  (void)t.end_step(1, 1);
  t.begin_step(2);
  StepRecord r = t.end_step(2, 1);
  EXPECT_EQ(r.step, 2);
  EXPECT_EQ(r[Phase::kForward], 0.0);
  EXPECT_EQ(r.cache_hit_rate, -1);
  EXPECT_TRUE(r.spans.empty());
}

TEST(StepTimerDeathTest, ScopeOutsideAStepIsABug) {
  StepTimer t(0);
  EXPECT_DEATH((void)t.phase(Phase::kForward), "outside begin_step");
}

}  // namespace
}  // namespace kiln::diag
