#include "kiln/plan/host_profile_merge.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

namespace kiln::plan {
namespace {

// A calibration whose every measured number is scaled by `f` (larger: a
// slower host for times, a faster one for rates).
HostProfile profile(double f, const std::string& when) {
  HostProfile p;
  p.host = "vm";
  p.measured_at = when;
  p.cores = 2;
  p.memory_bytes = 24.0 * (1ull << 30);
  for (auto [r, threads] : {std::pair{&p.one_thread, 1}, std::pair{&p.all_threads, 2}}) {
    r->threads = threads;
    r->linear_fwd = {4e-6 * f, 90e9 / f, 0};
    r->linear_bwd = {12e-6 * f, 45e9 / f, 20e9 / f};
    r->attention_fwd = {0, 60e9 / f, 2e-9 * f};
    r->attention_bwd = {0, 30e9 / f, 3e-9 * f};
    r->gelu_bwd = {9e-6 * f, 0.9e-9 * f};
    r->optimizer_per_tensor = {0, 16e-6 * f};
    r->optimizer_param_s = 1.4e-9 * f;
    r->op_overhead_s = 0.5e-6 * f;
  }
  p.stream_bytes_per_s = 30e9 / f;
  p.stream_all_bytes_per_s = 70e9 / f;
  p.shm = {1.3e-6 * f, 13e9 / f};
  p.tcp = {5.8e-6 * f, 2.2e9 / f};
  p.sharing = {{1, 1.2 * f, 0, 0, {{0.5e-3, 1.4 * f}, {2e-3, 1.2 * f}}},
               {2, 1.5 * f, 1e-3 * f, 1.3 * f, {}}};
  return p;
}

void expect_near_rel(double a, double b) { EXPECT_NEAR(a, b, 1e-9 * std::abs(b)) << a << " vs " << b; }

TEST(HostProfileMergeTest, EachFitComesWholeFromTheCalibrationWithTheMedianTime) {
  // Three calibrations of one drifting host: 1.0x, 1.3x (a slow spell) and 0.9x.
  const std::vector<HostProfile> cals = {profile(1.0, "T1"), profile(1.3, "T2"), profile(0.9, "T3")};
  auto m = merge_host_profiles(cals, {"a.toml", "b.toml", "c.toml"});
  ASSERT_TRUE(m.is_ok()) << m.status().to_string();
  const HostProfile want = profile(1.0, "");  // the median calibration throughout
  expect_near_rel(m->one_thread.linear_bwd.call_s, want.one_thread.linear_bwd.call_s);
  expect_near_rel(m->one_thread.linear_bwd.flops, want.one_thread.linear_bwd.flops);
  expect_near_rel(m->one_thread.linear_bwd.bytes_per_s, want.one_thread.linear_bwd.bytes_per_s);
  expect_near_rel(m->all_threads.attention_bwd.score_s, want.all_threads.attention_bwd.score_s);
  expect_near_rel(m->one_thread.gelu_bwd.per_unit_s, want.one_thread.gelu_bwd.per_unit_s);
  expect_near_rel(m->one_thread.optimizer_param_s, want.one_thread.optimizer_param_s);
  expect_near_rel(m->stream_all_bytes_per_s, want.stream_all_bytes_per_s);
  expect_near_rel(m->tcp.alpha_s, want.tcp.alpha_s);
  ASSERT_EQ(m->sharing.size(), 2u);
  expect_near_rel(m->sharing[1].handoff_s, 1e-3);
  expect_near_rel(m->sharing[1].independent_slowdown, 1.3);
  ASSERT_EQ(m->sharing[0].by_work.size(), 2u);
  expect_near_rel(m->sharing[0].by_work[1].slowdown, 1.2);
  EXPECT_EQ(m->cores, 2);
  EXPECT_EQ(m->measured_at, "T1 .. T3");
  // Note [Merging fits]: coefficients that trade off against each other
  // are not mixed. Three fits of one layer, each ~1 ms at the miniature's
  // shape; per-coefficient medians (the first's traffic term, the third's
  // rate) would make one slower than all three.
  std::vector<HostProfile> fits = {profile(1.0, "T1"), profile(1.0, "T2"), profile(1.0, "T3")};
  fits[0].one_thread.linear_bwd = {0, 49e9, 5e9};
  fits[1].one_thread.linear_bwd = {4.6e-6, 43.8e9, 0};
  fits[2].one_thread.linear_bwd = {27.8e-6, 44.9e9, 37e9};
  auto t = [](const ProductRate& p) { return p.at(1024, 512, 128); };
  std::vector<double> times;
  for (const HostProfile& f : fits) times.push_back(t(f.one_thread.linear_bwd));
  const double mixed = t({4.6e-6, 44.9e9, 5e9});
  EXPECT_GT(mixed, *std::max_element(times.begin(), times.end()));
  auto whole = merge_host_profiles(fits, {"a.toml", "b.toml", "c.toml"});
  ASSERT_TRUE(whole.is_ok());
  std::sort(times.begin(), times.end());
  expect_near_rel(t(whole->one_thread.linear_bwd), times[1]);
}

TEST(HostProfileMergeTest, TwoCalibrationsMergeToTheMeanTimeNotTheFasterOne) {
  // 1.0x and 1.3x: no middle calibration. Every fit is the faster one's,
  // scaled to the mean of the two times (1.15x), so the merged profile
  // prices a step between the two calibrations, not at the faster one.
  const HostProfile fast = profile(1.0, "T1"), slow = profile(1.3, "T2");
  auto two = merge_host_profiles({slow, fast}, {"a.toml", "b.toml"});
  ASSERT_TRUE(two.is_ok()) << two.status().to_string();
  const double k = 1.15;
  auto gemm = [](const ComputeRates& r) { return r.linear_bwd.at(1024, 512, 128); };
  expect_near_rel(gemm(two->one_thread), k * gemm(fast.one_thread));
  expect_near_rel(two->one_thread.linear_bwd.call_s, k * fast.one_thread.linear_bwd.call_s);
  auto attention = [](const ComputeRates& r) { return r.attention_bwd.at(32, 128, 32); };
  expect_near_rel(attention(two->all_threads), k * attention(fast.all_threads));
  expect_near_rel(two->one_thread.gelu_bwd.at(1e5), k * fast.one_thread.gelu_bwd.at(1e5));
  expect_near_rel(two->one_thread.optimizer_param_s, k * fast.one_thread.optimizer_param_s);
  expect_near_rel(two->one_thread.optimizer_per_tensor.per_unit_s,
                  k * fast.one_thread.optimizer_per_tensor.per_unit_s);
  expect_near_rel(two->shm.bytes_per_s, 13e9 / k);
  expect_near_rel(two->tcp.alpha_s, k * 5.8e-6);
  ASSERT_EQ(two->sharing.size(), 2u);
  expect_near_rel(two->sharing[1].slowdown, k * 1.5);
  expect_near_rel(two->sharing[1].handoff_s, k * 1e-3);
  ASSERT_EQ(two->sharing[0].by_work.size(), 2u);
  expect_near_rel(two->sharing[0].by_work[0].slowdown, k * 1.4);
  expect_near_rel(two->stream_bytes_per_s, (30e9 + 30e9 / 1.3) / 2);  // a single value: its median
}

TEST(HostProfileMergeTest, ProfilesOfAnotherHostOrShapeAreNamed) {
  auto expect_error = [](const HostProfile& other, const std::vector<std::string>& needles) {
    auto m = merge_host_profiles({profile(1.0, "T1"), other}, {"a.toml", "b.toml"});
    ASSERT_FALSE(m.is_ok());
    EXPECT_EQ(m.status().code(), Code::kInvalidArgument);
    for (const auto& n : needles) {
      EXPECT_NE(m.status().message().find(n), std::string::npos)
          << "'" << n << "' not in: " << m.status().to_string();
    }
  };
  HostProfile four = profile(1.0, "T1");
  four.cores = 4;
  expect_error(four, {"b.toml", "host.cores", "4", "a.toml"});
  HostProfile quick = profile(1.0, "T1");
  quick.sharing.pop_back();
  expect_error(quick, {"b.toml", "[core_sharing]", "at 1 ranks", "1, 2"});
  EXPECT_FALSE(merge_host_profiles({}, {}).is_ok());
}

}  // namespace
}  // namespace kiln::plan
