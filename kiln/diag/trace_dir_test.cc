#include "kiln/diag/trace_dir.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "kiln/diag/html_report.h"
#include "kiln/diag/testing/temp_dir.h"
#include "kiln/diag/trace_session.h"

namespace kiln::diag {
namespace {

// A step of 100 ms (times `slow` on the given rank's forward).
StepRecord make_step(int rank, std::int64_t n, double fwd, double comm) {
  StepRecord r;
  r.step = n;
  r.rank = rank;
  r.start_unix_s = 1.7e9 + n;
  r[Phase::kForward] = fwd;
  r[Phase::kExposedComm] = comm;
  r[Phase::kBackward] = 0.02;
  r.step_s = fwd + comm + 0.02;
  r.loss = 2.0 / static_cast<double>(n + 1);
  r.samples = 64;
  return r;
}

// Two ranks through TraceSession, as `kiln train --trace-dir` writes them:
// rank 1's forward takes 4x rank 0's after the warm-up, rank 0 waits for it.
std::string write_straggler_dir(const testing::TempDir& tmp) {
  std::string dir = tmp.file("trace");
  for (int rank = 0; rank < 2; ++rank) {
    auto s = TraceSession::open(dir, rank, {.world_size = 2, .sample_interval_s = 0});
    EXPECT_TRUE(s.is_ok()) << s.status().to_string();
    for (int n = 0; n < 20; ++n) {
      // Warm-up steps (n < 5) are slow everywhere and would hide the straggler.
      double fwd = n < 5 ? 0.5 : (rank == 1 ? 0.08 : 0.02);
      double comm = n < 5 ? 0 : (rank == 1 ? 0.0 : 0.06);
      EXPECT_TRUE((*s)->record_step(make_step(rank, n, fwd, comm)).is_ok());
    }
    EXPECT_TRUE((*s)->close().is_ok());
  }
  return dir;
}

TEST(TraceDir, ReadsBackWhatTheSessionWroteAndNamesTheStraggler) {
  testing::TempDir tmp;
  std::string dir = write_straggler_dir(tmp);
  auto t = read_trace_dir(dir);
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  ASSERT_EQ(t->ranks.size(), 2u);
  EXPECT_EQ(t->ranks[1].rank, 1);
  EXPECT_EQ(t->ranks[1].steps.size(), 20u);

  auto summaries = summarize_trace(*t, 5);
  EXPECT_EQ(summaries[0].steps, 15);
  EXPECT_EQ(summaries[0].first_step, 5);

  auto v = diagnose(*t, 5);
  ASSERT_TRUE(v.is_ok()) << v.status().to_string();
  EXPECT_EQ(v->verdict, "straggler");
  EXPECT_EQ(v->rank, 1);
  EXPECT_FALSE(v->evidence.empty());
  EXPECT_GT(v->phase_fractions.at("exposed_comm"), 0.2);

  // Every step, warm-up included: the warm-up's slow forward dominates.
  auto all = diagnose(*t, 0);
  ASSERT_TRUE(all.is_ok());
  EXPECT_NE(all->phase_fractions.at("forward"), v->phase_fractions.at("forward"));

  auto none = diagnose(*t, 1000);
  EXPECT_EQ(none.status().code(), Code::kFailedPrecondition);
}

TEST(TraceDir, SkipsATornLastLineButNotACorruptOne) {
  testing::TempDir tmp;
  std::string dir = write_straggler_dir(tmp);
  const std::string metrics = dir + "/rank-1/metrics.jsonl";
  { std::ofstream(metrics, std::ios::app) << "{\"type\":\"step\",\"st"; }
  auto torn = read_trace_dir(dir);
  ASSERT_TRUE(torn.is_ok()) << torn.status().to_string();
  EXPECT_EQ(torn->ranks[1].steps.size(), 20u);

  { std::ofstream(metrics, std::ios::app) << "\n{\"type\":\"step\",\"step\":99}\n"; }
  auto bad = read_trace_dir(dir);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), Code::kDataLoss);
  EXPECT_NE(bad.status().message().find("rank-1/metrics.jsonl:21"), std::string::npos)
      << bad.status().to_string();
}

TEST(TraceDir, MissingOrEmptyDirectoryIsNotFound) {
  testing::TempDir tmp;
  EXPECT_EQ(read_trace_dir(tmp.file("nope")).status().code(), Code::kNotFound);
  std::filesystem::create_directories(tmp.file("empty"));
  auto empty = read_trace_dir(tmp.file("empty"));
  EXPECT_EQ(empty.status().code(), Code::kNotFound);
  EXPECT_NE(empty.status().message().find("--trace-dir"), std::string::npos);
}

TEST(HtmlReport, EmbedsEveryChartAndNoExternalResource) {
  testing::TempDir tmp;
  auto t = read_trace_dir(write_straggler_dir(tmp));
  ASSERT_TRUE(t.is_ok());
  auto v = diagnose(*t, 5);
  ASSERT_TRUE(v.is_ok());
  std::string html = render_html_report(*t, *v, 5);
  for (const char* id :
       {"id=\"breakdown\"", "id=\"loss\"", "id=\"ranks\"", "bottleneck: straggler"}) {
    EXPECT_NE(html.find(id), std::string::npos) << id;
  }
  // The warm-up steps 0-4 are left out of the charts, like the verdict.
  EXPECT_NE(html.find("\"step\":[5,"), std::string::npos);
  EXPECT_EQ(html.find("\"step\":[0,"), std::string::npos);
  EXPECT_EQ(html.find("\"step\":[0.0,"), std::string::npos);
  EXPECT_EQ(html.find("src=\"http"), std::string::npos);
  EXPECT_EQ(html.find("href=\"http"), std::string::npos);
  // The embedded JSON cannot close its <script> early.
  auto data = html.find("const DATA = ");
  ASSERT_NE(data, std::string::npos);
  EXPECT_EQ(html.find("</", data), html.find("</script>", data));
}

}  // namespace
}  // namespace kiln::diag
