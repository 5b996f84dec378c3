#include "kiln/plan/host_profile.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>

namespace kiln::plan {
namespace {

HostProfile sample() {
  HostProfile p;
  p.host = "box \"one\"";
  p.cpu = "AMD EPYC";
  p.blas = "OpenBLAS SkylakeX";
  p.measured_at = "2026-12-06T09:00:00Z";
  p.cores = 2;
  p.memory_bytes = 24.0 * (1ull << 30);
  p.one_thread = {1, 95.5e9, 6.25e-6, 180e9, 20.5e9, 11e-6, 1.5e-6, 30e9, 2.5e-6};
  p.all_threads = {2, 170.25e9, 9e-6, 0, 33e9, 12e-6, 1.25e-6, 45e9, 3e-6};
  p.stream_bytes_per_s = 12.5e9;
  p.stream_all_bytes_per_s = 20e9;
  p.shm = {2.75e-6, 6.5e9};
  p.tcp = {31e-6, 1.75e9};
  return p;
}

void expect_near_rel(double a, double b) { EXPECT_NEAR(a, b, 1e-5 * std::abs(b)) << a << " vs " << b; }

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
  for (auto [a, b] : {std::pair{q->one_thread, p.one_thread}, std::pair{q->all_threads, p.all_threads}}) {
    EXPECT_EQ(a.threads, b.threads);
    expect_near_rel(a.gemm_flops, b.gemm_flops);
    expect_near_rel(a.gemm_call_s, b.gemm_call_s);
    expect_near_rel(a.gemm_bytes_per_s, b.gemm_bytes_per_s);
    expect_near_rel(a.bmm_flops, b.bmm_flops);
    expect_near_rel(a.bmm_call_s, b.bmm_call_s);
    expect_near_rel(a.bmm_product_s, b.bmm_product_s);
    expect_near_rel(a.elementwise_bytes_per_s, b.elementwise_bytes_per_s);
    expect_near_rel(a.op_overhead_s, b.op_overhead_s);
  }
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
  expect_error(with_line("gemm_gflops", "gemm_gflops = \"fast\""),
               {"bad.toml", "compute_1_thread.gemm_gflops", "positive number", "line"});
  expect_error(with_line("gemm_gflops", "gemm_gflops = -3.0"),
               {"bad.toml", "compute_1_thread.gemm_gflops"});
  expect_error(with_line("cores", "# cores missing"), {"bad.toml", "host.cores", "missing"});
  expect_error(with_line("alpha_us", "alpha_us = 2.0\nalpah_us = 3.0"),
               {"bad.toml", "unknown field 'link_shm.alpah_us'", "docs/plan.md"});
  expect_error(with_line("version", "version = 7"), {"bad.toml", "profile.version", "recalibrate"});
  expect_error(with_line("threads", "threads = 2"), {"compute_1_thread.threads", "must be 1"});
  expect_error("[profile\nversion = 1", {"bad.toml", "TOML parse error"});
}

TEST(HostProfileTest, RatesInterpolateBetweenOneThreadAndAllCores) {
  HostProfile p = sample();
  p.cores = 4;
  p.all_threads.threads = 4;
  p.one_thread.gemm_flops = 100e9;
  p.all_threads.gemm_flops = 340e9;
  EXPECT_DOUBLE_EQ(p.rates(1).gemm_flops, 100e9);
  EXPECT_DOUBLE_EQ(p.rates(4).gemm_flops, 340e9);
  EXPECT_DOUBLE_EQ(p.rates(2).gemm_flops, 180e9);
  EXPECT_DOUBLE_EQ(p.rates(9).gemm_flops, 340e9);  // capped at the cores
  EXPECT_EQ(p.rates(3).threads, 3);
}

TEST(HostProfileTest, ProductTimesFollowTheFittedModels) {
  ComputeRates r{1, 100e9, 5e-6, 50e9, 20e9, 7e-6, 2e-6, 1e9, 0};
  // 2·64·32·16 = 65536 FLOPs; 4·(64·16 + 16·32 + 64·32) = 14336 bytes.
  EXPECT_NEAR(r.gemm_s(64, 32, 16), 5e-6 + 65536 / 100e9 + 14336 / 50e9, 1e-15);
  EXPECT_NEAR(r.bmm_s(64, 32, 16, 3), 7e-6 + 3 * (2e-6 + 65536 / 20e9), 1e-15);
  r.gemm_bytes_per_s = 0;  // no traffic term
  EXPECT_NEAR(r.gemm_s(64, 32, 16), 5e-6 + 65536 / 100e9, 1e-15);
}

}  // namespace
}  // namespace kiln::plan
