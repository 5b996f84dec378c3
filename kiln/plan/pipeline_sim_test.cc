#include "kiln/plan/pipeline_sim.h"

#include <gtest/gtest.h>

#include <set>
#include <tuple>

namespace kiln::plan {
namespace {

PipelineSimInput equal_stages(int p, int v, int m, double f, double b) {
  PipelineSimInput in;
  in.stages = p;
  in.chunks = v;
  in.micro_batches = m;
  in.forward_s.assign(p, std::vector<double>(v, f / v));
  in.backward_s.assign(p, std::vector<double>(v, b / v));
  in.cores = 64;  // nothing shared unless a test says so
  return in;
}

TEST(PipelineSimTest, EveryDeviceRunsEachMicroBatchOnceInBothDirections) {
  for (int p : {1, 2, 4}) {
    for (int v : {1, 2}) {
      if (v > 1 && p == 1) continue;
      for (int m : {4, 8}) {
        for (int d = 0; d < p; ++d) {
          std::set<std::tuple<int, int, bool>> seen;
          for (const PipelineOp& op : schedule_for_device(d, p, v, m)) {
            EXPECT_TRUE(seen.insert({op.micro_batch, op.chunk, op.forward}).second);
          }
          EXPECT_EQ(seen.size(), static_cast<size_t>(2 * m * v)) << p << " " << v << " " << m;
        }
      }
    }
  }
}

TEST(PipelineSimTest, OneF1BOnDedicatedDevicesMatchesNarayanan) {
  // (m + p − 1)·(f + b): the bubble is (p − 1)/m of the ideal m·(f + b).
  for (int p : {1, 2, 4}) {
    for (int m : {1, 2, 4, 8}) {
      auto r = simulate_pipeline(equal_stages(p, 1, m, 1.0, 2.0));
      ASSERT_TRUE(r.is_ok()) << r.status().to_string();
      EXPECT_NEAR(r->makespan_s, (m + p - 1) * 3.0, 1e-9) << "p " << p << " m " << m;
      EXPECT_NEAR(r->full_speed_fraction, 1, 1e-12);
    }
  }
}

TEST(PipelineSimTest, InterleavingShrinksTheBubbleByV) {
  // Megatron's interleaved schedule: (m + (p − 1)/v)·(f + b) with equal chunks.
  for (int p : {2, 4}) {
    for (int m : {4, 8}) {
      auto one = simulate_pipeline(equal_stages(p, 1, m, 1.0, 2.0));
      auto two = simulate_pipeline(equal_stages(p, 2, m, 1.0, 2.0));
      ASSERT_TRUE(one.is_ok() && two.is_ok());
      EXPECT_NEAR(two->makespan_s, (m + (p - 1) / 2.0) * 3.0, 1e-9) << "p " << p << " m " << m;
      EXPECT_LT(two->makespan_s, one->makespan_s);
    }
  }
}

TEST(PipelineSimTest, SharedCoresScaleTheWorkOfOneStage) {
  // No pipeline, 8 ranks on 2 cores: every rank at a quarter speed.
  PipelineSimInput in = equal_stages(1, 1, 4, 1.0, 2.0);
  in.ranks_per_device = 8;
  in.cores = 2;
  auto r = simulate_pipeline(in);
  ASSERT_TRUE(r.is_ok());
  EXPECT_NEAR(r->makespan_s, 4 * 3.0 * 4, 1e-9);
  EXPECT_NEAR(r->full_speed_fraction, 0, 1e-12);
}

TEST(PipelineSimTest, OversubscribedPipelineFillsItsBubbleWithOtherStagesWork) {
  // PP 4 × DP 2 on 2 cores: 8 ranks. Total work 8 ranks × m·(f + b), at most
  // 2 cores' worth per second: makespan >= 4·m·(f + b). The fill and drain
  // run at full speed (fewer runnable ranks), so the schedule adds much less
  // than the dedicated bubble of (p − 1)·(f + b).
  const int m = 4;
  PipelineSimInput in = equal_stages(4, 1, m, 1.0, 2.0);
  in.ranks_per_device = 2;
  in.cores = 2;
  auto r = simulate_pipeline(in);
  ASSERT_TRUE(r.is_ok());
  const double aggregate = 8.0 * m * 3.0 / 2;
  EXPECT_GE(r->makespan_s, aggregate - 1e-9);
  EXPECT_LT(r->makespan_s - aggregate, 3 * 3.0 * 0.5);  // under half the dedicated bubble
  EXPECT_GT(r->full_speed_fraction, 0);
}

TEST(PipelineSimTest, WorkRunsAtTheSlowdownOfTheRanksRunnableAtTheMoment) {
  // One device of one rank on 2 cores (0.5 ranks per core): all its work at
  // the relative slowdown of 0.5 per core.
  PipelineSimInput alone = equal_stages(1, 1, 4, 1.0, 2.0);
  alone.cores = 2;
  alone.relative_slowdown = [](double k) { return k < 1 ? 0.8 : 1.0; };
  auto r = simulate_pipeline(alone);
  ASSERT_TRUE(r.is_ok());
  EXPECT_NEAR(r->makespan_s, 0.8 * 4 * 3.0, 1e-9);

  // PP 2 on 1 core, one micro-batch: never two runnable at once, so every
  // operation runs at the one-rank factor; with both runnable it would be 2.
  PipelineSimInput chain = equal_stages(2, 1, 1, 1.0, 2.0);
  chain.cores = 1;
  chain.relative_slowdown = [](double k) { return k > 1.5 ? 2.0 : 0.5; };
  r = simulate_pipeline(chain);
  ASSERT_TRUE(r.is_ok());
  EXPECT_NEAR(r->makespan_s, 0.5 * 2 * 3.0, 1e-9);

  // Eight ranks on 2 cores the whole time (no pipeline): the factor at 4.
  PipelineSimInput shared = equal_stages(1, 1, 4, 1.0, 2.0);
  shared.ranks_per_device = 8;
  shared.cores = 2;
  shared.relative_slowdown = [](double k) { return k > 3.5 ? 1.25 : 1.0; };
  r = simulate_pipeline(shared);
  ASSERT_TRUE(r.is_ok());
  EXPECT_NEAR(r->makespan_s, 1.25 * 4 * 3.0 * 4, 1e-9);
}

TEST(PipelineSimTest, TailsAndP2pLatencyAddUp) {
  PipelineSimInput in = equal_stages(2, 1, 2, 1.0, 2.0);
  in.tail_s = {0.5, 0.25};
  auto r = simulate_pipeline(in);
  ASSERT_TRUE(r.is_ok());
  // Device 0 does the last backward at (m + p − 1)·3 = 9, then its tail.
  EXPECT_NEAR(r->makespan_s, 9.5, 1e-9);
  EXPECT_NEAR(r->finish_s[0], 9.5, 1e-9);
  in.tail_s.clear();
  in.p2p_latency_s = 0.1;
  r = simulate_pipeline(in);
  ASSERT_TRUE(r.is_ok());
  // The critical path crosses the stage boundary twice (forward of the first
  // micro-batch, backward of the last): 9 + 2 × 0.1.
  EXPECT_NEAR(r->makespan_s, 9.2, 1e-9);
}

TEST(PipelineSimTest, WaitsPassInWallTimeWithoutACore) {
  // One stage of 4 ranks on 2 cores, each operation's compute at half speed
  // then its hand-off wait: m·(2(f + b) + wf + wb), the probe's model
  // round = max(1, ranks/cores)·work + handoff.
  PipelineSimInput in = equal_stages(1, 1, 3, 1.0, 2.0);
  in.ranks_per_device = 4;
  in.cores = 2;
  in.forward_wait_s = {{0.25}};
  in.backward_wait_s = {{0.5}};
  in.tail_s = {1.0};
  in.tail_wait_s = {0.125};
  auto r = simulate_pipeline(in);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_NEAR(r->makespan_s, 3 * (2 * 3.0 + 0.75) + 2 * 1.0 + 0.125, 1e-9);

  // Two stages of 2 ranks on 2 cores: while one device waits, the other
  // computes at full speed. Stage 0 forward then waits 1 s; stage 1's
  // forward of the previous micro-batch gets both cores meanwhile.
  PipelineSimInput two = equal_stages(2, 1, 2, 1.0, 1.0);
  two.ranks_per_device = 2;
  two.cores = 2;
  auto bare = simulate_pipeline(two);
  ASSERT_TRUE(bare.is_ok());
  two.forward_wait_s = {{1.0}, {0.0}};
  two.backward_wait_s = {{0.0}, {0.0}};
  auto waited = simulate_pipeline(two);
  ASSERT_TRUE(waited.is_ok());
  // The waits lengthen the step, but by less than their sum on the critical
  // path would if they held a core.
  EXPECT_GT(waited->makespan_s, bare->makespan_s);
  EXPECT_LE(waited->makespan_s, bare->makespan_s + 2 * 1.0 + 1e-9);

  two.forward_wait_s = {{1.0}};  // wrong shape
  EXPECT_EQ(simulate_pipeline(two).status().code(), Code::kInvalidArgument);
}

TEST(PipelineSimTest, RefusesInconsistentInput) {
  PipelineSimInput in = equal_stages(2, 2, 3, 1.0, 2.0);  // interleaved needs m % p == 0
  EXPECT_EQ(simulate_pipeline(in).status().code(), Code::kInvalidArgument);
  in = equal_stages(2, 1, 2, 1.0, 2.0);
  in.forward_s.pop_back();
  EXPECT_EQ(simulate_pipeline(in).status().code(), Code::kInvalidArgument);
  in = equal_stages(2, 1, 2, 1.0, 2.0);
  in.cores = 0;
  EXPECT_EQ(simulate_pipeline(in).status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace kiln::plan
