#include "kiln/plan/host_profile.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>

namespace kiln::plan {
namespace {

// Distinct values in every field, so a field read into the wrong place shows.
ComputeRates rates(int threads, double f) {
  ComputeRates c;
  c.threads = threads;
  c.linear_fwd = {6.25e-6 * f, 95.5e9 * f, 180e9 * f};
  c.linear_bwd = {7.5e-6 * f, 60.25e9 * f, 0};
  c.attention_fwd = {11e-6 * f, 20.5e9 * f, 1.5e-9 * f};
  c.attention_bwd = {12e-6 * f, 15.5e9 * f, 4.25e-9 * f};
  c.layer_norm_fwd = {3e-6 * f, 0.5e-9 * f};
  c.layer_norm_bwd = {4e-6 * f, 1.25e-9 * f};
  c.gelu_fwd = {2e-6 * f, 3.5e-9 * f};
  c.gelu_bwd = {2.5e-6 * f, 13e-9 * f};
  c.rotary_fwd = {9e-6 * f, 2.75e-9 * f};
  c.rotary_bwd = {10e-6 * f, 3.25e-9 * f};
  c.add = {1.5e-6 * f, 0.3e-9 * f};
  c.loss_fwd = {5e-6 * f, 2.1e-9 * f};
  c.loss_bwd = {6e-6 * f, 3.1e-9 * f};
  c.embedding_fwd = {7e-6 * f, 0.7e-9 * f};
  c.embedding_bwd = {8e-6 * f, 0.9e-9 * f};
  c.optimizer_per_tensor = {30e-6 * f, 4.5e-6 * f};
  c.optimizer_param_s = 1.1e-9 * f;
  c.op_overhead_s = 0.6e-6 * f;
  return c;
}

void expect_same_rates(const ComputeRates& a, const ComputeRates& b);

HostProfile sample() {
  HostProfile p;
  p.host = "box \"one\"";
  p.cpu = "AMD EPYC";
  p.blas = "OpenBLAS SkylakeX";
  p.measured_at = "2026-12-06T09:00:00Z";
  p.cores = 2;
  p.memory_bytes = 24.0 * (1ull << 30);
  p.one_thread = rates(1, 1.0);
  p.all_threads = rates(2, 1.75);
  p.stream_bytes_per_s = 12.5e9;
  p.stream_all_bytes_per_s = 20e9;
  p.shm = {2.75e-6, 6.5e9};
  p.tcp = {31e-6, 1.75e9};
  return p;
}

void expect_near_rel(double a, double b) { EXPECT_NEAR(a, b, 1e-5 * std::abs(b)) << a << " vs " << b; }

void expect_same_rates(const ComputeRates& a, const ComputeRates& b) {
  EXPECT_EQ(a.threads, b.threads);
  for (auto [x, y] : {std::pair{a.linear_fwd, b.linear_fwd}, std::pair{a.linear_bwd, b.linear_bwd}}) {
    expect_near_rel(x.call_s, y.call_s);
    expect_near_rel(x.flops, y.flops);
    expect_near_rel(x.bytes_per_s, y.bytes_per_s);
  }
  for (auto [x, y] : {std::pair{a.attention_fwd, b.attention_fwd},
                      std::pair{a.attention_bwd, b.attention_bwd}}) {
    expect_near_rel(x.call_s, y.call_s);
    expect_near_rel(x.flops, y.flops);
    expect_near_rel(x.score_s, y.score_s);
  }
  const std::pair<Affine, Affine> affines[] = {
      {a.layer_norm_fwd, b.layer_norm_fwd}, {a.layer_norm_bwd, b.layer_norm_bwd},
      {a.gelu_fwd, b.gelu_fwd},             {a.gelu_bwd, b.gelu_bwd},
      {a.rotary_fwd, b.rotary_fwd},         {a.rotary_bwd, b.rotary_bwd},
      {a.add, b.add},                       {a.loss_fwd, b.loss_fwd},
      {a.loss_bwd, b.loss_bwd},             {a.embedding_fwd, b.embedding_fwd},
      {a.embedding_bwd, b.embedding_bwd},   {a.optimizer_per_tensor, b.optimizer_per_tensor}};
  for (const auto& [x, y] : affines) {
    expect_near_rel(x.fixed_s, y.fixed_s);
    expect_near_rel(x.per_unit_s, y.per_unit_s);
  }
  expect_near_rel(a.optimizer_param_s, b.optimizer_param_s);
  expect_near_rel(a.op_overhead_s, b.op_overhead_s);
}

TEST(HostProfileTest, RoundTripsThroughToml) {
  const HostProfile p = sample();
  auto q = parse_host_profile(host_profile_to_toml(p), "rt.toml");
  ASSERT_TRUE(q.is_ok()) << q.status().to_string() << "\n" << host_profile_to_toml(p);
  EXPECT_EQ(q->host, p.host);
  EXPECT_EQ(q->cpu, p.cpu);
  EXPECT_EQ(q->blas, p.blas);
  EXPECT_EQ(q->measured_at, p.measured_at);
  EXPECT_EQ(q->cores, 2);
  expect_near_rel(q->memory_bytes, p.memory_bytes);
  expect_same_rates(q->one_thread, p.one_thread);
  expect_same_rates(q->all_threads, p.all_threads);
  expect_near_rel(q->stream_bytes_per_s, p.stream_bytes_per_s);
  expect_near_rel(q->stream_all_bytes_per_s, p.stream_all_bytes_per_s);
  expect_near_rel(q->shm.alpha_s, p.shm.alpha_s);
  expect_near_rel(q->shm.bytes_per_s, p.shm.bytes_per_s);
  expect_near_rel(q->tcp.alpha_s, p.tcp.alpha_s);
  expect_near_rel(q->tcp.bytes_per_s, p.tcp.bytes_per_s);
  // And the text is stable: writing what was read gives the same file.
  EXPECT_EQ(host_profile_to_toml(*q), host_profile_to_toml(p));
}

TEST(HostProfileTest, ReadsAFileAndNamesAMissingOne) {
  const std::string path = "/tmp/kiln-host-profile-test-" + std::to_string(getpid()) + ".toml";
  {
    std::ofstream out(path);
    out << host_profile_to_toml(sample());
  }
  auto p = read_host_profile(path);
  std::remove(path.c_str());
  ASSERT_TRUE(p.is_ok()) << p.status().to_string();
  EXPECT_EQ(p->source, "profile " + path);
  auto missing = read_host_profile(path);
  EXPECT_EQ(missing.status().code(), Code::kNotFound);
  EXPECT_NE(missing.status().message().find(path), std::string::npos) << missing.status().to_string();
}

// Replaces the first line starting with `key =` in the sample's TOML.
std::string with_line(const std::string& key, const std::string& replacement) {
  std::string text = host_profile_to_toml(sample());
  const auto at = text.find("\n" + key + " =");
  EXPECT_NE(at, std::string::npos) << key;
  const auto end = text.find('\n', at + 1);
  return text.substr(0, at + 1) + replacement + text.substr(end);
}

void expect_error(const std::string& text, const std::vector<std::string>& needles) {
  auto p = parse_host_profile(text, "bad.toml");
  ASSERT_FALSE(p.is_ok());
  EXPECT_EQ(p.status().code(), Code::kInvalidArgument);
  for (const auto& n : needles) {
    EXPECT_NE(p.status().message().find(n), std::string::npos)
        << "'" << n << "' not in: " << p.status().to_string();
  }
}

TEST(HostProfileTest, MalformedFieldsNameFileFieldAndLine) {
  expect_error(with_line("linear_fwd_gflops", "linear_fwd_gflops = \"fast\""),
               {"bad.toml", "compute_1_thread.linear_fwd_gflops", "positive number", "line"});
  expect_error(with_line("linear_fwd_gflops", "linear_fwd_gflops = -3.0"),
               {"bad.toml", "compute_1_thread.linear_fwd_gflops"});
  expect_error(with_line("gelu_bwd_ns", "gelu_bwd_ns = -1.0"),
               {"bad.toml", "compute_1_thread.gelu_bwd_ns", ">= 0"});
  expect_error(with_line("cores", "# cores missing"), {"bad.toml", "host.cores", "missing"});
  expect_error(with_line("alpha_us", "alpha_us = 2.0\nalpah_us = 3.0"),
               {"bad.toml", "unknown field 'link_shm.alpah_us'", "docs/plan.md"});
  expect_error(with_line("version", "version = 7"), {"bad.toml", "profile.version", "recalibrate"});
  expect_error(with_line("threads", "threads = 2"), {"compute_1_thread.threads", "must be 1"});
  expect_error("[profile\nversion = 1", {"bad.toml", "TOML parse error"});
}

TEST(HostProfileTest, RatesTakeTheNearerMeasuredThreadCount) {
  HostProfile p = sample();
  p.cores = 4;
  p.all_threads.threads = 4;
  EXPECT_EQ(&p.rates(1), &p.one_thread);
  EXPECT_EQ(&p.rates(2), &p.one_thread);  // 1 away from 1, 2 from 4
  EXPECT_EQ(&p.rates(3), &p.all_threads);
  EXPECT_EQ(&p.rates(4), &p.all_threads);
  EXPECT_EQ(&p.rates(9), &p.all_threads);  // capped at the cores
}

TEST(HostProfileTest, KernelModelsPriceTheirShapes) {
  const ProductRate linear{5e-6, 100e9, 50e9};
  // 2·64·32·16 = 65536 FLOPs; 4·(64·16 + 16·32 + 64·32) = 14336 bytes.
  EXPECT_NEAR(linear.at(64, 32, 16), 5e-6 + 65536 / 100e9 + 14336 / 50e9, 1e-15);
  const ProductRate no_traffic{5e-6, 100e9, 0};
  EXPECT_NEAR(no_traffic.at(64, 32, 16), 5e-6 + 65536 / 100e9, 1e-15);
  const AttentionRate attention{7e-6, 20e9, 2e-9};
  // 16 matrices of 128 × 32: 4·128²·32 FLOPs and 128² scores each.
  EXPECT_NEAR(attention.at(16, 128, 32), 7e-6 + 16 * (4.0 * 128 * 128 * 32 / 20e9 + 128 * 128 * 2e-9),
              1e-15);
  EXPECT_NEAR((Affine{3e-6, 2e-9}).at(1000), 3e-6 + 2e-6, 1e-18);
}

TEST(HostProfileTest, CoreSharingRoundTripsAndInterpolates) {
  HostProfile p = sample();
  EXPECT_EQ(p.sharing_slowdown(4), 1);  // not measured: fair shares only
  EXPECT_EQ(p.handoff_s(4), 0);
  p.sharing = {{1, 1.1, 10e-6}, {2, 1.25, 1e-3}, {4, 1.5, 3e-3}};
  auto q = parse_host_profile(host_profile_to_toml(p), "rt.toml");
  ASSERT_TRUE(q.is_ok()) << q.status().to_string() << "\n" << host_profile_to_toml(p);
  ASSERT_EQ(q->sharing.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(q->sharing[i].ranks_per_core, p.sharing[i].ranks_per_core);
    expect_near_rel(q->sharing[i].slowdown, p.sharing[i].slowdown);
    expect_near_rel(q->sharing[i].handoff_s, p.sharing[i].handoff_s);
  }
  EXPECT_EQ(host_profile_to_toml(*q), host_profile_to_toml(p));
  // Linear between the points, clamped outside them.
  expect_near_rel(q->sharing_slowdown(3), 1.375);
  expect_near_rel(q->handoff_s(3), 2e-3);
  expect_near_rel(q->handoff_s(1.5), 505e-6);
  expect_near_rel(q->sharing_slowdown(0.5), 1.1);
  expect_near_rel(q->sharing_slowdown(8), 1.5);
}

TEST(HostProfileTest, CoreSharingRefusesUnknownAndMalformedKeys) {
  HostProfile p = sample();
  p.sharing = {{1, 1.1, 10e-6}};
  const std::string text = host_profile_to_toml(p);
  expect_error(text + "slowdown_3 = 1.2\n", {"slowdown_3", "core_sharing"});
  std::string bad = text;
  const auto at = bad.find("slowdown_1 = 1.1");
  ASSERT_NE(at, std::string::npos) << text;
  bad.replace(at, 16, "slowdown_1 = \"x\"");
  expect_error(bad, {"core_sharing.slowdown_1"});
}

TEST(HostProfileTest, IndependentSlowdownRoundTripsAndFallsBackToThePairs) {
  HostProfile p = sample();
  p.sharing = {{1, 1.1, 10e-6}, {2, 1.25, 1e-3}, {4, 1.5, 3e-3}};
  // Not measured (older profiles): every rank is priced as the pairs.
  expect_near_rel(p.independent_slowdown(3), 1.375);
  EXPECT_EQ(host_profile_to_toml(p).find("\nindependent_slowdown_"), std::string::npos);
  p.sharing[1].independent_slowdown = 1.05;
  p.sharing[2].independent_slowdown = 1.25;
  auto q = parse_host_profile(host_profile_to_toml(p), "rt.toml");
  ASSERT_TRUE(q.is_ok()) << q.status().to_string() << "\n" << host_profile_to_toml(p);
  ASSERT_EQ(q->sharing.size(), 3u);
  EXPECT_EQ(q->sharing[0].independent_slowdown, 0);
  expect_near_rel(q->sharing[1].independent_slowdown, 1.05);
  EXPECT_EQ(host_profile_to_toml(*q), host_profile_to_toml(p));
  // Point by point: the pairs' 1.1 where a level lacks it, linear between.
  expect_near_rel(q->independent_slowdown(1), 1.1);
  expect_near_rel(q->independent_slowdown(1.5), 1.075);
  expect_near_rel(q->independent_slowdown(3), 1.15);
  expect_near_rel(q->sharing_slowdown(3), 1.375);  // the pairs' own unchanged
  // A level's independent slowdown needs the level.
  HostProfile lone = sample();
  lone.sharing = {{1, 1.1, 10e-6}};
  expect_error(host_profile_to_toml(lone) + "independent_slowdown_2 = 1.2\n",
               {"independent_slowdown_2", "slowdown_2"});
  std::string bad = host_profile_to_toml(p);
  const auto at = bad.find("independent_slowdown_2 = 1.05");
  ASSERT_NE(at, std::string::npos);
  bad.replace(at, 29, "independent_slowdown_2 = -1.0");
  expect_error(bad, {"core_sharing.independent_slowdown_2"});
}

TEST(HostProfileTest, SlowdownByWorkRoundTripsAndInterpolatesInLogWork) {
  HostProfile p = sample();
  p.sharing = {{1, 1.2, 0}, {2, 1.5, 1e-3}};
  // Note [Work between meetings]: without a table the slope applies at any work.
  expect_near_rel(p.sharing_slowdown(1, 0.5e-3), 1.2);
  expect_near_rel(p.sharing_slowdown(1.5, 9e-3), 1.35);
  p.sharing[0].by_work = {{0.5e-3, 1.4}, {2e-3, 1.2}, {8e-3, 1.1}};
  auto q = parse_host_profile(host_profile_to_toml(p), "rt.toml");
  ASSERT_TRUE(q.is_ok()) << q.status().to_string() << "\n" << host_profile_to_toml(p);
  ASSERT_EQ(q->sharing[0].by_work.size(), 3u);
  EXPECT_TRUE(q->sharing[1].by_work.empty());
  EXPECT_EQ(host_profile_to_toml(*q), host_profile_to_toml(p));
  // Linear in log w between probed sizes (1 ms is halfway from 0.5 to 2 in
  // log), clamped outside them; the constant slope is what it was.
  expect_near_rel(q->sharing_slowdown(1, 1e-3), 1.3);
  expect_near_rel(q->sharing_slowdown(1, 4e-3), 1.15);
  expect_near_rel(q->sharing_slowdown(1, 0.1e-3), 1.4);
  expect_near_rel(q->sharing_slowdown(1, 20e-3), 1.1);
  expect_near_rel(q->sharing_slowdown(1), 1.2);
  // Between levels: each level at that work, then linear in ranks per core
  // (level 2 has no table: its 1.5 at any work).
  expect_near_rel(q->sharing_slowdown(1.5, 1e-3), (1.3 + 1.5) / 2);
  // Malformed tables name the field.
  const std::string text = host_profile_to_toml(p);
  std::string bad = text;
  bad.replace(bad.find("slowdown_at_work_1 = ["), 22, "slowdown_at_work_1 = [1.0, ");
  expect_error(bad, {"core_sharing.slowdown_at_work_1", "work_us_1"});
  bad = text;
  bad.replace(bad.find("work_us_1 = [500.0"), 18, "work_us_1 = [5000.0");
  expect_error(bad, {"core_sharing.work_us_1", "ascending"});
  bad = text;
  bad.replace(bad.find("work_us_1 = [500.0"), 18, "work_us_1 = [-500.0");
  expect_error(bad, {"core_sharing.work_us_1", "positive"});
}

TEST(HostProfileTest, AProfileWithTheRetiredPipelineHandOffIsRefusedSayingWhy) {
  // Note [Pipeline hand-off]: calibrations of sessions 5-10 wrote the
  // section; it is refused by name, not priced another way in silence.
  const std::string text = host_profile_to_toml(sample());
  EXPECT_EQ(text.find("pipeline_handoff"), std::string::npos) << text;
  expect_error(text + "\n[pipeline_handoff]\nhandoff_us_2 = 700.0\nhandoff_us_4 = 0.0\n",
               {"bad.toml", "pipeline_handoff.handoff_us_2", "no longer read", "lockstep",
                "delete the [pipeline_handoff] section"});
}

}  // namespace
}  // namespace kiln::plan
