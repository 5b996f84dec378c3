#include "kiln/plan/host_profile_merge.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

namespace kiln::plan {
namespace {

// A profile whose every measured number is scaled by `f` (so the merge's
// medians can be told from means and from any one input).
HostProfile profile(double f, const std::string& when) {
  HostProfile p;
  p.host = "vm";
  p.cpu = "AMD EPYC";
  p.blas = "OpenBLAS Haswell";
  p.measured_at = when;
  p.cores = 2;
  p.memory_bytes = 24.0 * (1ull << 30);
  for (auto [r, threads] : {std::pair{&p.one_thread, 1}, std::pair{&p.all_threads, 2}}) {
    r->threads = threads;
    r->linear_fwd = {4e-6 * f, 90e9 * f, 0};
    r->linear_bwd = {12e-6 * f, 45e9 * f, 0};
    r->attention_fwd = {0, 60e9 * f, 2e-9 * f};
    r->attention_bwd = {0, 30e9 * f, 3e-9 * f};
    r->gelu_bwd = {9e-6 * f, 0.9e-9 * f};
    r->optimizer_param_s = 1.4e-9 * f;
  }
  p.stream_bytes_per_s = 30e9 * f;
  p.stream_all_bytes_per_s = 70e9 * f;
  p.shm = {1.3e-6 * f, 13e9 * f};
  p.tcp = {5.8e-6 * f, 2.2e9 * f};
  p.sharing = {{1, 1.2 * f, 0, 0, {{0.5e-3, 1.4 * f}, {2e-3, 1.2 * f}}},
               {2, 1.5 * f, 1e-3 * f, 1.3 * f, {}}};
  p.pipeline_handoff = {{2, 700e-6 * f}, {4, 500e-6 * f}};
  return p;
}

void expect_near_rel(double a, double b) { EXPECT_NEAR(a, b, 1e-5 * std::abs(b)) << a << " vs " << b; }

TEST(HostProfileMergeTest, EveryMeasuredNumberIsTheMedianOfTheCalibrations) {
  // Three calibrations of one drifting host: 1.0x, 1.3x (a slow spell) and 0.9x.
  const std::vector<std::string> texts = {host_profile_to_toml(profile(1.0, "T1")),
                                          host_profile_to_toml(profile(1.3, "T2")),
                                          host_profile_to_toml(profile(0.9, "T3"))};
  auto m = merge_host_profiles(texts, {"a.toml", "b.toml", "c.toml"});
  ASSERT_TRUE(m.is_ok()) << m.status().to_string();
  const HostProfile want = profile(1.0, "");  // the median of 0.9, 1.0 and 1.3 is 1.0
  expect_near_rel(m->one_thread.linear_fwd.flops, want.one_thread.linear_fwd.flops);
  expect_near_rel(m->all_threads.attention_bwd.score_s, want.all_threads.attention_bwd.score_s);
  expect_near_rel(m->one_thread.optimizer_param_s, want.one_thread.optimizer_param_s);
  expect_near_rel(m->stream_all_bytes_per_s, want.stream_all_bytes_per_s);
  expect_near_rel(m->tcp.alpha_s, want.tcp.alpha_s);
  ASSERT_EQ(m->sharing.size(), 2u);
  expect_near_rel(m->sharing[1].handoff_s, 1e-3);
  expect_near_rel(m->sharing[1].independent_slowdown, 1.3);
  ASSERT_EQ(m->sharing[0].by_work.size(), 2u);  // arrays element by element
  expect_near_rel(m->sharing[0].by_work[0].work_s, 0.5e-3);
  expect_near_rel(m->sharing[0].by_work[1].slowdown, 1.2);
  ASSERT_EQ(m->pipeline_handoff.size(), 2u);
  expect_near_rel(m->pipeline_handoff[0].handoff_s, 700e-6);
  // Counts stay what they were; the window is named.
  EXPECT_EQ(m->cores, 2);
  EXPECT_EQ(m->all_threads.threads, 2);
  EXPECT_EQ(m->measured_at, "T1 .. T3");
  EXPECT_EQ(m->host, "vm");
  // Two calibrations: the median is their mean.
  auto two = merge_host_profiles({texts[0], texts[1]}, {"a.toml", "b.toml"});
  ASSERT_TRUE(two.is_ok()) << two.status().to_string();
  expect_near_rel(two->shm.bytes_per_s, 13e9 * 1.15);
}

TEST(HostProfileMergeTest, ProfilesThatDoNotMatchAreNamedWithTheKey) {
  const std::string base = host_profile_to_toml(profile(1.0, "T1"));
  auto expect_error = [&](const std::string& other, const std::vector<std::string>& needles) {
    auto m = merge_host_profiles({base, other}, {"a.toml", "b.toml"});
    ASSERT_FALSE(m.is_ok());
    EXPECT_EQ(m.status().code(), Code::kInvalidArgument);
    for (const auto& n : needles) {
      EXPECT_NE(m.status().message().find(n), std::string::npos)
          << "'" << n << "' not in: " << m.status().to_string();
    }
  };
  // A section the other lacks (an older calibration without the pipeline probe).
  HostProfile older = profile(1.0, "T0");
  older.pipeline_handoff.clear();
  expect_error(host_profile_to_toml(older), {"b.toml", "pipeline_handoff.handoff_us_2", "missing"});
  // ... and a key only the other has.
  auto reversed = merge_host_profiles({host_profile_to_toml(older), base}, {"a.toml", "b.toml"});
  ASSERT_FALSE(reversed.is_ok());
  EXPECT_NE(reversed.status().message().find("b.toml: pipeline_handoff.handoff_us_2"),
            std::string::npos)
      << reversed.status().to_string();
  // Another host.
  HostProfile four = profile(1.0, "T1");
  four.cores = 4;
  four.all_threads.threads = 4;
  expect_error(host_profile_to_toml(four), {"b.toml", "host.cores", "differs"});
  // A table of another length.
  HostProfile longer = profile(1.0, "T1");
  longer.sharing[0].by_work.push_back({8e-3, 1.1});
  expect_error(host_profile_to_toml(longer), {"b.toml", "core_sharing.", "_1 must be an array of 2 numbers"});
  // A value that is not a number.
  std::string text = base;
  text.replace(text.find("stream_gbytes_per_s = "), 22, "stream_gbytes_per_s = \"x\" #");
  expect_error(text, {"b.toml", "memory.stream_gbytes_per_s", "not a number"});
  // Malformed TOML names its file.
  expect_error("[host\n", {"b.toml"});
}

}  // namespace
}  // namespace kiln::plan
