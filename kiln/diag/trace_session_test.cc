#include "kiln/diag/trace_session.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "kiln/diag/testing/temp_dir.h"

namespace kiln::diag {
namespace {

std::vector<nlohmann::json> lines(const std::string& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> out;
  for (std::string l; std::getline(in, l);) out.push_back(nlohmann::json::parse(l));
  return out;
}

StepRecord make_step(std::int64_t n, double data_wait) {
  StepRecord r;
  r.step = n;
  r.start_unix_s = 1.7e9 + n;
  r.step_s = 0.1;
  r[Phase::kDataWait] = data_wait;
  r[Phase::kForward] = 0.1 - data_wait;
  r.samples = 32;
  r.spans = {{Phase::kDataWait, 0, data_wait}};
  return r;
}

TEST(TraceSession, WritesTheDocumentedLayout) {
  testing::TempDir tmp;
  TraceOptions o;
  o.world_size = 1;
  o.summary_every = 4;
  o.trace_max_steps = 3;
  o.sample_interval_s = 0;  // no sampler: deterministic line counts
  auto s = TraceSession::open(tmp.file("trace"), 0, o);
  ASSERT_TRUE(s.is_ok()) << s.status().to_string();
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ((*s)->summary_due(), false);
    ASSERT_TRUE((*s)->record_step(make_step(i, 0.05)).is_ok());
  }
  ASSERT_TRUE((*s)->record_eval(4, 0.7, 0.8).is_ok());
  EXPECT_TRUE((*s)->summary_due());
  auto v = (*s)->summarize(nullptr, std::chrono::seconds(1));
  ASSERT_TRUE(v.is_ok());
  EXPECT_EQ(v->verdict, "data");
  EXPECT_FALSE((*s)->summary_due());
  ASSERT_TRUE((*s)->close().is_ok());

  const std::string rank_dir = tmp.file("trace/rank-0");
  EXPECT_EQ((*s)->rank_dir(), rank_dir);
  auto meta = nlohmann::json::parse(std::ifstream(rank_dir + "/meta.json"));
  EXPECT_EQ(meta["rank"], 0);
  EXPECT_EQ(meta["format"], "kiln-trace-dir");

  auto m = lines(rank_dir + "/metrics.jsonl");
  ASSERT_EQ(m.size(), 6u);  // 4 steps, 1 eval, 1 summary
  EXPECT_EQ(m[0]["type"], "step");
  EXPECT_EQ(m[4]["type"], "eval");
  EXPECT_EQ(m[5]["type"], "summary");
  EXPECT_EQ(m[5]["steps"], 4);
  EXPECT_NEAR(m[5]["phase_s_mean"]["data_wait"].get<double>(), 0.05, 1e-12);

  // The trace stopped at trace_max_steps and was closed properly.
  auto trace = nlohmann::json::parse(std::ifstream(rank_dir + "/trace.json"));
  int steps = 0;
  for (const auto& e : trace) steps += e.value("cat", "") == "step";
  EXPECT_EQ(steps, 3);

  auto cluster = lines(tmp.file("trace/summaries.jsonl"));
  ASSERT_EQ(cluster.size(), 1u);
  EXPECT_EQ(cluster[0]["type"], "cluster");
  EXPECT_EQ(cluster[0]["step"], 3);
  EXPECT_EQ(cluster[0]["verdict"]["verdict"], "data");
  EXPECT_EQ(cluster[0]["ranks"].size(), 1u);
}

TEST(TraceSession, WithoutADirectoryWritesNothingButStillSummarises) {
  TraceOptions o;
  o.summary_every = 2;
  o.sample_interval_s = 0;
  auto s = TraceSession::open("", 3, o);
  ASSERT_TRUE(s.is_ok());
  ASSERT_TRUE((*s)->record_step(make_step(0, 0)).is_ok());
  ASSERT_TRUE((*s)->record_step(make_step(1, 0)).is_ok());
  RankSummary sum = (*s)->take_summary();
  EXPECT_EQ(sum.rank, 3);
  EXPECT_EQ(sum.steps, 2);
  EXPECT_EQ(sum.samples_per_s, 320);
}

TEST(TraceSession, SystemSamplesReachMetricsAndSummaries) {
  testing::TempDir tmp;
  TraceOptions o;
  o.sample_interval_s = 0.01;
  o.sampler.nvml = false;
  auto s = TraceSession::open(tmp.path(), 0, o);
  ASSERT_TRUE(s.is_ok());
  // Wait (bounded) until the sampler has produced a rate-bearing sample.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (true) {
    auto latest = (*s)->latest_system();
    if (latest && latest->interval_s > 0) break;
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "no system sample within 10 s";
    std::this_thread::yield();
  }
  ASSERT_TRUE((*s)->record_step(make_step(0, 0)).is_ok());
  RankSummary sum = (*s)->take_summary();
  EXPECT_GE(sum.system_samples, 2);
  EXPECT_GT(sum.rss_bytes, 0);
  EXPECT_GE(sum.cpu_cores, 0);
  ASSERT_TRUE((*s)->close().is_ok());
  int system_lines = 0;
  for (const auto& l : lines(tmp.file("rank-0/metrics.jsonl"))) {
    if (l["type"] == "system") {
      ++system_lines;
      EXPECT_EQ(l["gpu"], "not available: NVML sampling disabled");
    }
  }
  EXPECT_GE(system_lines, 2);
  auto trace = nlohmann::json::parse(std::ifstream(tmp.file("rank-0/trace.json")));
  int counters = 0;
  for (const auto& e : trace) counters += e["ph"] == "C" && e["name"] == "utilisation";
  EXPECT_GE(counters, 1);
}

TEST(TraceSession, UnwritableDirectoryIsAnErrorNamingIt) {
  auto s = TraceSession::open("/proc/kiln-no-such-dir", 0, {});
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.status().message().find("/proc/kiln-no-such-dir/rank-0"), std::string::npos);
}

}  // namespace
}  // namespace kiln::diag
