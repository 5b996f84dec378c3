#include "kiln/parallel/pipeline/schedule.h"

#include <gtest/gtest.h>

#include <cmath>
#include <set>

namespace kiln::parallel::pipeline {
namespace {

std::vector<ScheduleSpec> every_spec() {
  std::vector<ScheduleSpec> specs;
  for (int p : {1, 2, 3, 4, 8}) {
    for (int m : {1, 2, 3, 4, 8, 16}) {
      specs.push_back({ScheduleKind::k1F1B, p, m, 1});
      for (int v : {2, 3, 4}) {
        if (p >= 2 && m % p == 0) specs.push_back({ScheduleKind::kInterleaved, p, m, v});
      }
    }
  }
  return specs;
}

std::string name(const ScheduleSpec& s) {
  return std::string(schedule_name(s.kind)) + " p" + std::to_string(s.stages) + " m" +
         std::to_string(s.microbatches) + " v" + std::to_string(s.chunks);
}

TEST(PipelineSchedule, EveryChunkRunsEachMicrobatchForwardThenBackwardOnce) {
  for (const ScheduleSpec& s : every_spec()) {
    for (int r = 0; r < s.stages; ++r) {
      std::set<std::pair<int, int>> forwarded, backwarded;
      for (const Action& a : step_actions(s, r)) {
        const std::pair<int, int> key{a.chunk, a.microbatch};
        if (a.kind == Action::kForward) {
          EXPECT_TRUE(forwarded.insert(key).second) << name(s) << " rank " << r;
        } else {
          EXPECT_TRUE(forwarded.count(key)) << name(s) << " rank " << r << ": backward before forward";
          EXPECT_TRUE(backwarded.insert(key).second) << name(s) << " rank " << r;
        }
      }
      EXPECT_EQ(static_cast<int>(forwarded.size()), s.microbatches * s.chunks) << name(s);
      EXPECT_EQ(static_cast<int>(backwarded.size()), s.microbatches * s.chunks) << name(s);
    }
  }
}

TEST(PipelineSchedule, EveryScheduleCompletesOverFifoChannels) {
  for (const ScheduleSpec& s : every_spec()) {
    auto t = simulate_pipeline(s, 1.0, 2.0);
    EXPECT_TRUE(t.is_ok()) << name(s) << ": " << t.status().to_string();
  }
}

// The simulated bubble is the closed form exactly for 1F1B (equal stages,
// free communication), and at most the closed form for the interleaved
// schedule (whose formula is the paper's bound).
TEST(PipelineSchedule, SimulatedBubbleMatchesTheFormula) {
  for (const ScheduleSpec& s : every_spec()) {
    if (s.microbatches < s.stages) continue;
    auto t = simulate_pipeline(s, 1.0, 2.0);
    ASSERT_TRUE(t.is_ok()) << name(s);
    const double ideal = 3.0 * s.microbatches;
    const double bubble = (*t - ideal) / ideal;
    if (s.kind == ScheduleKind::k1F1B) {
      EXPECT_NEAR(bubble, bubble_formula(s), 1e-9) << name(s);
    } else {
      EXPECT_LE(bubble, bubble_formula(s) + 1e-9) << name(s);
      EXPECT_LT(bubble, bubble_formula({ScheduleKind::k1F1B, s.stages, s.microbatches, 1})) << name(s);
    }
  }
}

TEST(PipelineSchedule, OneF1BHoldsAtMostPMinusSInFlight) {
  ScheduleSpec s{ScheduleKind::k1F1B, 4, 8, 1};
  for (int r = 0; r < 4; ++r) {
    int live = 0, peak = 0;
    for (const Action& a : step_actions(s, r)) {
      live += a.kind == Action::kForward ? 1 : -1;
      peak = std::max(peak, live);
    }
    EXPECT_EQ(peak, 4 - r) << "rank " << r;
  }
}

TEST(PipelineSchedule, InvalidSpecsAreNamed) {
  EXPECT_FALSE(validate({ScheduleKind::kInterleaved, 4, 6, 2}).is_ok());
  EXPECT_FALSE(validate({ScheduleKind::kInterleaved, 1, 4, 2}).is_ok());
  EXPECT_FALSE(validate({ScheduleKind::k1F1B, 2, 4, 2}).is_ok());
  EXPECT_FALSE(parse_schedule("gpipe").is_ok());
  EXPECT_EQ(*parse_schedule("interleaved"), ScheduleKind::kInterleaved);
}

}  // namespace
}  // namespace kiln::parallel::pipeline
