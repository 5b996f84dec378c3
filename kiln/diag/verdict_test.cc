#include "kiln/diag/verdict.h"

#include <gtest/gtest.h>

namespace kiln::diag {
namespace {

// A rank whose 100 ms step splits as given (seconds); the rest is "other".
RankSummary rank(int r, double data, double fwd, double bwd, double comm, double opt, double ckpt) {
  RankSummary s;
  s.rank = r;
  s.steps = 50;
  s.phase_s_mean[static_cast<int>(Phase::kDataWait)] = data;
  s.phase_s_mean[static_cast<int>(Phase::kForward)] = fwd;
  s.phase_s_mean[static_cast<int>(Phase::kBackward)] = bwd;
  s.phase_s_mean[static_cast<int>(Phase::kExposedComm)] = comm;
  s.phase_s_mean[static_cast<int>(Phase::kOptimizer)] = opt;
  s.phase_s_mean[static_cast<int>(Phase::kCheckpointStall)] = ckpt;
  double sum = data + fwd + bwd + comm + opt + ckpt;
  s.step_s_mean = s.step_s_median = s.step_s_max = std::max(sum, 0.1);
  s.phase_s_mean[static_cast<int>(Phase::kOther)] = s.step_s_mean - sum;
  return s;
}

bool mentions(const Verdict& v, const std::string& needle) {
  for (const auto& e : v.evidence) {
    if (e.find(needle) != std::string::npos) return true;
  }
  return false;
}

TEST(Verdict, CleanRunIsCompute) {
  std::vector<RankSummary> r = {rank(0, 0.002, 0.03, 0.06, 0.005, 0.003, 0),
                                rank(1, 0.002, 0.031, 0.059, 0.005, 0.003, 0)};
  Verdict v = decide(r);
  EXPECT_EQ(v.verdict, "compute");
  EXPECT_EQ(v.rank, -1);
  EXPECT_TRUE(mentions(v, "is 93% of the step")) << v.evidence[0];
  EXPECT_NEAR(v.phase_fractions["backward"], 0.595, 1e-9);
  EXPECT_EQ(v.world_size, 2);
}

TEST(Verdict, DataWaitOnAllRanks) {
  std::vector<RankSummary> r = {rank(0, 0.031, 0.02, 0.04, 0.005, 0.004, 0),
                                rank(1, 0.034, 0.02, 0.04, 0.002, 0.004, 0)};
  r[0].cache_hit_rate = 0.12;
  r[1].cache_hit_rate = 0.12;
  r[0].disk_read_Bps = r[1].disk_read_Bps = 95e6;
  Verdict v = decide(r);
  EXPECT_EQ(v.verdict, "data");
  EXPECT_TRUE(mentions(v, "data wait is 32% of the step on all 2 ranks (31%-34%)"))
      << v.evidence[0];
  EXPECT_TRUE(mentions(v, "cache hit rate 12%"));
  EXPECT_TRUE(mentions(v, "95 MB/s"));
  EXPECT_NE(v.next.find("cache capacity"), std::string::npos);
}

TEST(Verdict, ExposedCommIsComm) {
  std::vector<RankSummary> r = {rank(0, 0.001, 0.02, 0.04, 0.035, 0.004, 0),
                                rank(1, 0.001, 0.02, 0.04, 0.036, 0.004, 0)};
  r[0].comm_bytes_per_step = r[1].comm_bytes_per_step = 45e6;
  r[0].comm_s_per_step = r[1].comm_s_per_step = 0.05;
  Verdict v = decide(r);
  EXPECT_EQ(v.verdict, "comm");
  EXPECT_TRUE(mentions(v, "exposed comm is 35% of the step"));
  EXPECT_TRUE(mentions(v, "45.0 MB per step at 900 MB/s"));
}

TEST(Verdict, CheckpointStall) {
  std::vector<RankSummary> r = {rank(0, 0.001, 0.02, 0.04, 0.005, 0.004, 0.05),
                                rank(1, 0.001, 0.02, 0.04, 0.02, 0.004, 0.035)};
  Verdict v = decide(r);
  EXPECT_EQ(v.verdict, "checkpoint");
  EXPECT_TRUE(mentions(v, "checkpoint stall is"));
  EXPECT_NE(v.next.find("asynchronously"), std::string::npos);
}

TEST(Verdict, RankZeroStallingLongerOnCheckpointsIsNotAStraggler) {
  // Rank 0 writes the manifest: its stall is 2x rank 1's, rank 1 waits for it.
  std::vector<RankSummary> r = {rank(0, 0.001, 0.02, 0.04, 0.002, 0.004, 0.08),
                                rank(1, 0.001, 0.02, 0.04, 0.042, 0.004, 0.04)};
  Verdict v = decide(r);
  EXPECT_EQ(v.verdict, "checkpoint");
}

TEST(Verdict, OneSlowRankIsAStragglerNamedWithItsRatio) {
  // Rank 1 computes 2.1x longer; ranks 0 and 2 wait for it in exposed comm.
  std::vector<RankSummary> r = {rank(0, 0.001, 0.02, 0.04, 0.068, 0.004, 0),
                                rank(1, 0.001, 0.042, 0.084, 0.002, 0.0084, 0),
                                rank(2, 0.001, 0.02, 0.04, 0.068, 0.004, 0)};
  Verdict v = decide(r);
  EXPECT_EQ(v.verdict, "straggler");
  EXPECT_EQ(v.rank, 1);
  EXPECT_TRUE(mentions(v, "rank 1's compute (forward+backward+optimizer) is 2.1x the median"))
      << v.evidence[0];
  EXPECT_TRUE(mentions(v, "waiting in exposed comm"));
  EXPECT_NE(v.next.find("rank 1's host"), std::string::npos);
  auto j = verdict_to_json(v);
  EXPECT_EQ(j["rank"], 1);
  EXPECT_EQ(j["verdict"], "straggler");
}

TEST(Verdict, SmallImbalanceIsNoStraggler) {
  std::vector<RankSummary> r = {rank(0, 0.001, 0.03, 0.06, 0.01, 0.003, 0),
                                rank(1, 0.001, 0.033, 0.066, 0.002, 0.003, 0)};
  EXPECT_EQ(decide(r).verdict, "compute");
}

// Note [A straggler is persistent], on synthetic windows: 2 ranks whose data
// wait is 26% of the step (as data-delay=60 on a 230 ms step), rank `slow`
// `extra` seconds slower in its own time in the given window.
std::vector<RankSummary> data_window(int slow, double extra) {
  std::vector<RankSummary> w = {rank(0, 0.06, 0.05, 0.1, 0.02, 0.002, 0),
                                rank(1, 0.06, 0.05, 0.1, 0.02, 0.002, 0)};
  RankSummary& s = w[slow];
  s.phase_s_mean[static_cast<int>(Phase::kForward)] += extra;
  s.step_s_mean += extra;
  // The other rank waits for it in exposed comm.
  RankSummary& o = w[1 - slow];
  o.phase_s_mean[static_cast<int>(Phase::kExposedComm)] += extra;
  o.step_s_mean += extra;
  return w;
}

// The whole run's summary of equally long windows.
std::vector<RankSummary> whole(const std::vector<std::vector<RankSummary>>& windows) {
  std::vector<RankSummary> out = windows.front();
  for (size_t i = 0; i < out.size(); ++i) {
    out[i].step_s_mean = 0;
    out[i].phase_s_mean = {};
    for (const auto& w : windows) {
      out[i].step_s_mean += w[i].step_s_mean / static_cast<double>(windows.size());
      for (int p = 0; p < kPhaseCount; ++p) {
        out[i].phase_s_mean[p] += w[i].phase_s_mean[p] / static_cast<double>(windows.size());
      }
    }
  }
  return out;
}

TEST(Verdict, ARankSlowInOneWindowIsNoStragglerAndTheDataWaitIsNamed) {
  // One window where another process took rank 1's core for a while: over
  // the run rank 1's own time is 1.35x rank 0's, but only there.
  std::vector<std::vector<RankSummary>> windows = {data_window(0, 0.004), data_window(1, 0.4),
                                                   data_window(0, 0.003), data_window(1, 0.002)};
  std::vector<RankSummary> run = whole(windows);
  ASSERT_GE(run[1].own_s(), 1.3 * run[0].own_s()) << "the old rule would name a straggler";
  Verdict v = decide(run, {}, windows);
  EXPECT_EQ(v.verdict, "data");
  EXPECT_EQ(v.rank, -1);
  ASSERT_FALSE(v.ranking.empty());
  EXPECT_EQ(v.ranking[0].verdict, "data");
  EXPECT_TRUE(mentions(v, "removing it would save about")) << v.evidence.back();
}

TEST(Verdict, TheSameRankSlowInMostWindowsIsAStraggler) {
  std::vector<std::vector<RankSummary>> windows = {data_window(1, 0.15), data_window(1, 0.16),
                                                   data_window(0, 0.003), data_window(1, 0.14),
                                                   data_window(1, 0.15)};
  Verdict v = decide(whole(windows), {}, windows);
  EXPECT_EQ(v.verdict, "straggler");
  EXPECT_EQ(v.rank, 1);
  EXPECT_TRUE(mentions(v, "the slowest rank in 4 of 5 windows")) << v.evidence[2];
  // Ranked by the time each cause costs: the straggler's ~120 ms excess over
  // the data wait's 60 ms.
  ASSERT_EQ(v.ranking.size(), 2u);
  EXPECT_EQ(v.ranking[0].verdict, "straggler");
  EXPECT_EQ(v.ranking[0].rank, 1);
  EXPECT_EQ(v.ranking[1].verdict, "data");
  EXPECT_GT(v.ranking[0].saves, v.ranking[1].saves);
  EXPECT_EQ(verdict_to_json(v)["ranking"][1]["verdict"], "data");

  // Flipping between ranks is noise, however large.
  std::vector<std::vector<RankSummary>> flips = {data_window(1, 0.15), data_window(0, 0.15),
                                                 data_window(1, 0.15), data_window(0, 0.14)};
  EXPECT_NE(decide(whole(flips), {}, flips).verdict, "straggler");
}

TEST(Verdict, AnExcessWithinTheRunsOwnNoiseIsNoStraggler) {
  std::vector<std::vector<RankSummary>> windows = {data_window(1, 0.08), data_window(1, 0.08),
                                                   data_window(1, 0.08)};
  std::vector<RankSummary> run = whole(windows);
  EXPECT_EQ(decide(run, {}, windows).verdict, "straggler");
  for (auto& r : run) r.own_s_stddev = 0.09;  // steps jitter by 90 ms: 80 ms is within it
  EXPECT_EQ(decide(run, {}, windows).verdict, "data");
}

TEST(Verdict, AStragglerCostingLessThanTheDataWaitRanksSecond) {
  // Rank 1 is persistently 120 ms slower (past 1.3x, 10% of the step and
  // the noise), but every rank waits 160 ms for data: data saves more.
  std::vector<std::vector<RankSummary>> windows = {data_window(1, 0.12), data_window(1, 0.12),
                                                   data_window(1, 0.12)};
  for (auto& w : windows) {
    for (auto& r : w) {
      r.phase_s_mean[static_cast<int>(Phase::kDataWait)] += 0.1;
      r.step_s_mean += 0.1;
    }
  }
  Verdict v = decide(whole(windows), {}, windows);
  EXPECT_EQ(v.verdict, "data");
  ASSERT_EQ(v.ranking.size(), 2u);
  EXPECT_EQ(v.ranking[1].verdict, "straggler");
  EXPECT_EQ(v.ranking[1].rank, 1);
  EXPECT_TRUE(mentions(v, "then straggler")) << v.evidence.back();
}

TEST(Verdict, WaitingForASlowerRankIsNotComm) {
  // Rank 0 waits 30% of its step for rank 1 (which flips: no straggler);
  // the rank that waits least waits 2%: communication itself costs little.
  std::vector<RankSummary> r = {rank(0, 0.001, 0.02, 0.04, 0.03, 0.004, 0),
                                rank(1, 0.001, 0.02, 0.07, 0.002, 0.004, 0)};
  r[1].own_s_stddev = r[0].own_s_stddev = 0.03;
  EXPECT_EQ(decide(r).verdict, "compute");
}

TEST(Verdict, HostMemoryNearlyExhausted) {
  std::vector<RankSummary> r = {rank(0, 0.031, 0.02, 0.04, 0.005, 0.004, 0),
                                rank(1, 0.001, 0.02, 0.04, 0.005, 0.004, 0)};
  r[1].mem_total_bytes = 64.0 * (1 << 30);
  r[1].mem_available_bytes = 1.5 * (1 << 30);
  r[1].rss_bytes = 50.0 * (1 << 30);
  Verdict v = decide(r);
  EXPECT_EQ(v.verdict, "memory");
  EXPECT_EQ(v.rank, 1);
  EXPECT_TRUE(mentions(v, "1.5 GiB available of 64.0 GiB (2%)")) << v.evidence[0];
}

TEST(Verdict, AcceleratorMemoryNearlyFull) {
  std::vector<RankSummary> r = {rank(0, 0.001, 0.03, 0.06, 0.005, 0.003, 0)};
  r[0].gpu_mem_frac = 0.97;
  Verdict v = decide(r);
  EXPECT_EQ(v.verdict, "memory");
  EXPECT_TRUE(mentions(v, "accelerator memory is 97% used"));
}

TEST(Verdict, NoStepsIsUnknown) {
  std::vector<RankSummary> r(2);
  Verdict v = decide(r);
  EXPECT_EQ(v.verdict, "unknown");
  EXPECT_EQ(v.world_size, 0);
}

TEST(RuleOfThumb, FollowsTheDesignsOrder) {
  RankSummary s = rank(0, 0, 0.05, 0.05, 0, 0, 0);
  std::vector<RankSummary> r = {s};
  EXPECT_EQ(rule_of_thumb(r).verdict, "unknown");  // no counters at all
  r[0].gpu_util = 0.5;
  r[0].disk_util = 0.9;
  EXPECT_EQ(rule_of_thumb(r).verdict, "storage");
  r[0].disk_util = 0.1;
  r[0].net_util = 0.85;
  EXPECT_EQ(rule_of_thumb(r).verdict, "network");
  r[0].net_util = 0.2;
  EXPECT_EQ(rule_of_thumb(r).verdict, "cpu");
  r[0].gpu_util = 0.9;
  EXPECT_EQ(rule_of_thumb(r).verdict, "compute");
  r[0].gpu_mem_frac = 0.96;
  EXPECT_EQ(rule_of_thumb(r).verdict, "memory");
  // Without NVML the process's CPUs stand in for the accelerator.
  r[0].gpu_util = -1;
  r[0].gpu_mem_frac = -1;
  r[0].cpu_cores = 3.6;
  r[0].cpu_count = 4;
  RuleOfThumb rule = rule_of_thumb(r);
  EXPECT_EQ(rule.verdict, "compute");
  EXPECT_NE(rule.reason.find("process CPU utilisation 90%"), std::string::npos) << rule.reason;
}

}  // namespace
}  // namespace kiln::diag
