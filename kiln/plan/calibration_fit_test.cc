#include "kiln/plan/calibration_fit.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace kiln::plan {
namespace {

TEST(CalibrationFitTest, RecoversTheGemmModelsConstants) {
  const double call = 7e-6, flops = 120e9, bytes = 60e9;
  std::vector<GemmSample> samples;
  for (double m : {128.0, 512.0, 2048.0}) {
    for (double n : {32.0, 128.0, 384.0}) {
      for (double k : {32.0, 128.0, 512.0}) {
        const double t = call + 2 * m * n * k / flops + 4 * (m * k + k * n + m * n) / bytes;
        samples.push_back({m, n, k, 1, t});
      }
    }
  }
  auto f = fit_gemm(samples);
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  EXPECT_NEAR(f->call_s, call, 1e-3 * call);
  EXPECT_NEAR(f->flops, flops, 1e-3 * flops);
  EXPECT_NEAR(f->bytes_per_s, bytes, 1e-3 * bytes);
  EXPECT_LT(f->mean_abs_rel_error, 1e-9);
}

TEST(CalibrationFitTest, DropsATermTheDataMakesNegative) {
  // Pure compute plus a call cost: a traffic term would fit negative noise.
  std::vector<GemmSample> samples;
  int i = 0;
  for (double m : {128.0, 512.0, 2048.0}) {
    for (double n : {64.0, 256.0}) {
      const double noise = (i++ % 2 == 0) ? 1.01 : 0.99;
      samples.push_back({m, n, 128, 1, (3e-6 + 2 * m * n * 128 / 80e9) * noise});
    }
  }
  auto f = fit_gemm(samples);
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  EXPECT_GE(f->call_s, 0);
  EXPECT_GE(f->bytes_per_s, 0);
  EXPECT_NEAR(f->flops, 80e9, 0.05 * 80e9);
}

// The linear shapes `kiln plan calibrate` probes (tokens × (out, in)).
std::vector<GemmSample> probe_grid(double call, double flops, double bytes) {
  std::vector<GemmSample> samples;
  for (double m : {128.0, 512.0, 1024.0, 2048.0, 4096.0}) {
    for (auto [n, k] : {std::pair{384.0, 128.0}, {128.0, 128.0}, {512.0, 128.0}, {128.0, 512.0}, {256.0, 128.0}}) {
      samples.push_back({m, n, k, 1, call + 2 * m * n * k / flops + 4 * (m * k + k * n + m * n) / bytes});
    }
  }
  return samples;
}

TEST(CalibrationFitTest, GemmFitLeavesOutStalledShapes) {
  // Note [Stalled shapes]: two intra-op threads ran a few shapes 3-10x slow.
  const double call = 10e-6, flops = 60e9, bytes = 40e9;
  std::vector<GemmSample> samples = probe_grid(call, flops, bytes);
  samples[2].seconds *= 10;   // 128 x 512 x 128
  samples[6].seconds *= 5;    // 512 x 128 x 128
  samples[14].seconds *= 4;   // 1024 x 256 x 128
  auto f = fit_gemm(samples);
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  EXPECT_EQ(f->stalled_samples, 3);
  EXPECT_NEAR(f->call_s, call, 1e-3 * call);
  EXPECT_NEAR(f->flops, flops, 1e-3 * flops);
  EXPECT_NEAR(f->bytes_per_s, bytes, 1e-3 * bytes);
  EXPECT_LT(f->mean_abs_rel_error, 1e-9);
}

TEST(CalibrationFitTest, NoiseIsNoStallAndFewPointsAreAllKept) {
  // Scatter up to 2x: every point stays in the fit.
  std::vector<GemmSample> samples = probe_grid(10e-6, 60e9, 40e9);
  for (size_t i = 0; i < samples.size(); ++i) samples[i].seconds *= i % 3 == 0 ? 2.0 : 0.9;
  auto f = fit_gemm(samples);
  ASSERT_TRUE(f.is_ok());
  EXPECT_EQ(f->stalled_samples, 0);
  // Six points for three terms: none can be spared, the stall stays.
  std::vector<GemmSample> six(samples.begin(), samples.begin() + 6);
  for (GemmSample& s : six) s.seconds = 10e-6 + 2 * s.m * s.n * s.k / 60e9;
  six[1].seconds *= 10;
  auto g = fit_gemm(six);
  ASSERT_TRUE(g.is_ok());
  EXPECT_EQ(g->stalled_samples, 0);
}

TEST(CalibrationFitTest, AttentionFitLeavesOutAStalledShape) {
  // Session 11's 2-thread calibration: one slow shape among six moved the
  // fit to 3.7 GFLOP/s with no per-score term; a 128-matrix batch was then
  // priced at twice its time.
  const double call = 20e-6, flops = 60e9, score = 5e-9;
  auto time = [&](double bh, double hd) { return call + bh * (4 * 128 * 128 * hd / flops + 128 * 128 * score); };
  std::vector<GemmSample> samples;
  for (double hd : {32.0, 64.0}) {
    for (double bh : {2.0, 8.0, 32.0, 128.0}) samples.push_back({128, 128, hd, bh, time(bh, hd)});
  }
  samples[6].seconds *= 4.5;  // 32 matrices of 128 x 64
  auto f = fit_attention(samples);
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  EXPECT_EQ(f->stalled_samples, 1);
  EXPECT_NEAR(f->flops, flops, 1e-3 * flops);
  EXPECT_NEAR(f->score_s, score, 1e-3 * score);
  EXPECT_NEAR(f->call_s, call, 1e-3 * call);
}

TEST(CalibrationFitTest, BatchedProductsCountEveryProduct) {
  std::vector<GemmSample> samples;
  for (double b : {1.0, 4.0, 16.0}) {
    for (double m : {128.0, 256.0}) samples.push_back({m, 128, 32, b, 2e-6 + b * 2 * m * 128 * 32 / 50e9});
  }
  auto f = fit_gemm(samples);
  ASSERT_TRUE(f.is_ok());
  EXPECT_NEAR(f->flops, 50e9, 1e-3 * 50e9);
}

TEST(CalibrationFitTest, RefusesTooFewOrFlatSamples) {
  EXPECT_EQ(fit_gemm({{64, 64, 64, 1, 1e-5}}).status().code(), Code::kInvalidArgument);
  std::vector<GemmSample> flat;
  for (double m : {64.0, 128.0, 256.0, 512.0}) flat.push_back({m, m, m, 1, 1e-3 * (2000 - m)});
  EXPECT_EQ(fit_gemm(flat).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(fit_linear({{1024, 1e-5}}).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(fit_linear({{1024, 1e-5}, {1024, 2e-5}}).status().code(), Code::kInvalidArgument);
}

TEST(CalibrationFitTest, LinearFitGivesAlphaAndBeta) {
  // A two-rank ring all-reduce: t = 2α + S/β with α = 3 µs, β = 5 GB/s.
  std::vector<SizeSample> s;
  for (double bytes = 4096; bytes <= 4 << 20; bytes *= 4) s.push_back({bytes, 6e-6 + bytes / 5e9});
  auto f = fit_linear(s);
  ASSERT_TRUE(f.is_ok());
  EXPECT_NEAR(f->fixed_s / 2, 3e-6, 1e-9);
  EXPECT_NEAR(f->bytes_per_s, 5e9, 1e-3 * 5e9);
}

TEST(CalibrationFitTest, TimingsWithoutSlopeFallBackToTheLargestSizesPlainRate) {
  // Note [Noisy fits]: a loaded host timed the larger sizes faster.
  const std::vector<SizeSample> backwards = {{4096, 3e-3}, {65536, 2e-3}, {1 << 20, 1e-3}};
  ASSERT_FALSE(fit_linear(backwards).is_ok());
  auto f = fit_linear_or_plain_rate(backwards);
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  EXPECT_TRUE(f->plain_rate);
  EXPECT_DOUBLE_EQ(f->fixed_s, 0);
  EXPECT_DOUBLE_EQ(f->bytes_per_s, (1 << 20) / 1e-3);
  EXPECT_DOUBLE_EQ(f->mean_abs_rel_error, 1);
  // A fit that holds is returned as it is.
  std::vector<SizeSample> s;
  for (double bytes = 4096; bytes <= 4 << 20; bytes *= 4) s.push_back({bytes, 6e-6 + bytes / 5e9});
  auto g = fit_linear_or_plain_rate(s);
  ASSERT_TRUE(g.is_ok());
  EXPECT_FALSE(g->plain_rate);
  EXPECT_NEAR(g->bytes_per_s, 5e9, 1e-3 * 5e9);
  // No positive time at the largest size: no rate to stand in.
  EXPECT_FALSE(fit_linear_or_plain_rate({{4096, 1e-3}, {65536, 0}}).is_ok());
}

TEST(CalibrationFitTest, MedianOfOddAndEvenCounts) {
  EXPECT_DOUBLE_EQ(median_of({3, 1, 2}), 2);
  EXPECT_DOUBLE_EQ(median_of({4, 1, 3, 2}), 2.5);
  EXPECT_DOUBLE_EQ(median_of({}), 0);
}

TEST(CalibrationFitTest, SeparatesTheCoreSharingSlowdownFromTheHandOff) {
  // round = slowdown · max(1, level) · work + handoff, per level.
  struct Truth {
    double level, slowdown, handoff;
  };
  const Truth truth[] = {{4, 1.3, 3e-3}, {1, 1.05, 20e-6}, {2, 1.2, 1e-3}};
  std::vector<SharingSample> samples;
  for (const Truth& t : truth) {
    for (double work : {0.5e-3, 2e-3, 6e-3}) {
      samples.push_back({t.level, work, t.slowdown * std::max(1.0, t.level) * work + t.handoff});
    }
  }
  auto f = fit_core_sharing(samples);
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  ASSERT_EQ(f->size(), 3u);
  // Ascending in ranks per core whatever the sample order.
  const Truth sorted[] = {truth[1], truth[2], truth[0]};
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ((*f)[i].ranks_per_core, sorted[i].level);
    EXPECT_NEAR((*f)[i].slowdown, sorted[i].slowdown, 1e-9);
    EXPECT_NEAR((*f)[i].handoff_s, sorted[i].handoff, 1e-12);
  }
}

TEST(CalibrationFitTest, CoreSharingDropsANegativeHandOffAndNeedsTwoWorkSizes) {
  // Noise that would make the hand-off negative: it is dropped, the
  // slowdown refitted through the origin.
  std::vector<SharingSample> samples = {{2, 1e-3, 2 * 1e-3 * 0.99}, {2, 4e-3, 2 * 4e-3 * 1.01}};
  auto f = fit_core_sharing(samples);
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  EXPECT_EQ((*f)[0].handoff_s, 0);
  EXPECT_NEAR((*f)[0].slowdown, 1.0, 0.02);

  // Rounds that shrink as the work grows (a loaded machine): the largest
  // work's plain rate, no hand-off.
  auto noisy = fit_core_sharing({{1, 1e-3, 5e-3}, {1, 3e-3, 4e-3}});
  ASSERT_TRUE(noisy.is_ok()) << noisy.status().to_string();
  EXPECT_NEAR((*noisy)[0].slowdown, 4e-3 / 3e-3, 1e-9);
  EXPECT_EQ((*noisy)[0].handoff_s, 0);

  auto one = fit_core_sharing({{2, 1e-3, 3e-3}, {2, 1e-3, 3.1e-3}});
  EXPECT_EQ(one.status().code(), Code::kInvalidArgument);
  EXPECT_NE(one.status().message().find("2.0"), std::string::npos) << one.status().to_string();
}

TEST(CalibrationFitTest, CoreSharingKeepsEachWorkSizesOwnSlowdown) {
  // Note [Work between meetings]: at 1 rank per core the pairs lose more at
  // small work between meetings (1.4x at 0.5 ms, 1.2x at 2 ms, 1.1x at 8 ms)
  // on top of a 50 us hand-off; 2 ms timed twice (1.18x and 1.22x), so its
  // entry is their median. The affine fit's slope is one number over all;
  // the table keeps each size's (round - handoff) / work.
  const double h = 50e-6;
  std::vector<SharingSample> s = {{1, 0.5e-3, 1.4 * 0.5e-3 + h},
                                  {1, 2e-3, 1.18 * 2e-3 + h},
                                  {1, 2e-3, 1.22 * 2e-3 + h},
                                  {1, 8e-3, 1.1 * 8e-3 + h},
                                  // 2 ranks per core: exact affine rounds.
                                  {2, 1e-3, 1.5 * 2 * 1e-3 + 1e-3},
                                  {2, 4e-3, 1.5 * 2 * 4e-3 + 1e-3}};
  auto fit = fit_core_sharing(s);
  ASSERT_TRUE(fit.is_ok()) << fit.status().to_string();
  ASSERT_EQ(fit->size(), 2u);
  const CoreSharingPoint& one = (*fit)[0];
  ASSERT_EQ(one.by_work.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    const double w = std::vector<double>{0.5e-3, 2e-3, 8e-3}[i];
    const double expected = std::vector<double>{1.4, 1.2, 1.1}[i];
    EXPECT_EQ(one.by_work[i].work_s, w);
    EXPECT_NEAR(one.by_work[i].slowdown, expected + (h - one.handoff_s) / w, 1e-9) << w;
  }
  // Where the rounds are affine, every size gives the slope back.
  const CoreSharingPoint& two = (*fit)[1];
  EXPECT_NEAR(two.slowdown, 1.5, 1e-9);
  EXPECT_NEAR(two.handoff_s, 1e-3, 1e-9);
  ASSERT_EQ(two.by_work.size(), 2u);
  EXPECT_NEAR(two.by_work[0].slowdown, 1.5, 1e-9);
  EXPECT_NEAR(two.by_work[1].slowdown, 1.5, 1e-9);
}

TEST(CalibrationFitTest, CoreSharingRefusesASlopeNoComputeCouldHave) {
  // Two ranks per core, the 0.5 ms rounds stalled: the line through the two
  // points has slope 0.08. Fall back to the largest work's plain rate.
  std::vector<SharingSample> s = {{2, 0.5e-3, 3.0e-3}, {2, 2e-3, 3.3e-3}};
  auto fit = fit_core_sharing(s);
  ASSERT_TRUE(fit.is_ok()) << fit.status().to_string();
  EXPECT_NEAR((*fit)[0].slowdown, 3.3e-3 / (2 * 2e-3), 1e-9);
  EXPECT_EQ((*fit)[0].handoff_s, 0);
}

}  // namespace
}  // namespace kiln::plan
