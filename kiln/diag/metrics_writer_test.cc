#include "kiln/diag/metrics_writer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "kiln/diag/step_json.h"
#include "kiln/diag/summary.h"
#include "kiln/diag/testing/temp_dir.h"

namespace kiln::diag {
namespace {

std::vector<nlohmann::json> read_lines(const std::string &path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> out;
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

TEST(StepJson, RoundTripsEveryField) {
  StepRecord r;
  r.step = 7;
  r.rank = 2;
  r.start_unix_s = 1.7e9;
  r.step_s = 0.25;
  for (int i = 0; i < kPhaseCount; ++i) r.phase_s[i] = 0.01 * (i + 1);
  r.loss = 1.5;
  r.samples = 128;
  r.comm_bytes = 1 << 20;
  r.comm_s = 0.02;
  r.cache_hit_rate = 0.75;
  auto j = step_to_json(r);
  EXPECT_EQ(j["type"], "step");
  EXPECT_EQ(j["ckpt_stall"], 0.06);
  auto back = step_from_json(j);
  ASSERT_TRUE(back.is_ok()) << back.status().to_string();
  EXPECT_EQ(back->step, 7);
  EXPECT_EQ(back->rank, 2);
  EXPECT_EQ(back->phase_s, r.phase_s);
  EXPECT_EQ(back->comm_bytes, r.comm_bytes);
  EXPECT_EQ(back->cache_hit_rate, 0.75);
  EXPECT_EQ(back->loss, 1.5);
}

TEST(StepJson, RoundTripsEachCollectivesBytesTimeAndBandwidth) {
  StepRecord r;
  r.step_s = 0.1;
  r.collectives = {{4 << 20, 0.004}, {1000, 0.0005}};
  auto j = step_to_json(r);
  ASSERT_EQ(j["collectives"].size(), 2u) << j.dump();
  EXPECT_EQ(j["collectives"][0][0], 4 << 20);
  EXPECT_DOUBLE_EQ(j["collectives"][0][2].get<double>(), (4 << 20) / 0.004);
  auto back = step_from_json(j);
  ASSERT_TRUE(back.is_ok()) << back.status().to_string();
  ASSERT_EQ(back->collectives.size(), 2u);
  EXPECT_EQ(back->collectives[1].bytes, 1000u);
  EXPECT_EQ(back->collectives[1].seconds, 0.0005);
  j["collectives"][1] = "x";
  EXPECT_FALSE(step_from_json(j).is_ok());

  // A window's summary: collectives per step, the largest, bytes over seconds.
  WindowAccumulator acc(0);
  acc.add_step(r);
  r.collectives = {{2 << 20, 0.004}};
  acc.add_step(r);
  RankSummary s = acc.summary();
  EXPECT_DOUBLE_EQ(s.collectives_per_step, 1.5);
  EXPECT_DOUBLE_EQ(s.collective_bytes_max, 4 << 20);
  EXPECT_DOUBLE_EQ(s.collective_Bps, ((6 << 20) + 1000) / 0.0085);
  EXPECT_EQ(summary_to_json(s)["collective_Bps"], s.collective_Bps);
}

TEST(StepJson, EveryStepOfA3dRunCarriesItsMeshCoordinate) {
  StepTimer timer(5);
  timer.set_mesh({.dp = 1, .pp = 0, .tp = 1});
  for (std::int64_t step : {0, 1}) {
    timer.begin_step(step);
    timer.current().collectives = {{1024, 0.001}, {512, 0.001}};
    timer.current().collectives_in_backward = 1;
    const nlohmann::json j = step_to_json(timer.end_step(2.0, 8));
    EXPECT_EQ(j["mesh"], (nlohmann::json{{"dp", 1}, {"pp", 0}, {"tp", 1}})) << j.dump();
    EXPECT_EQ(j["collectives_in_backward"], 1);
    auto back = step_from_json(j);
    ASSERT_TRUE(back.is_ok()) << back.status().to_string();
    EXPECT_EQ(back->mesh.dp, 1);
    EXPECT_EQ(back->mesh.pp, 0);
    EXPECT_EQ(back->mesh.tp, 1);
    EXPECT_EQ(back->collectives_in_backward, 1);
  }
  // A data-parallel run's records have neither key.
  StepTimer plain(0);
  plain.begin_step(0);
  const nlohmann::json j = step_to_json(plain.end_step(1.0, 8));
  EXPECT_FALSE(j.contains("mesh")) << j.dump();
  EXPECT_FALSE(j.contains("collectives_in_backward")) << j.dump();
  EXPECT_FALSE(step_from_json(j)->mesh.known());
  // A coordinate without its tensor rank is named.
  timer.begin_step(2);
  nlohmann::json bad = step_to_json(timer.end_step(0, 0));
  bad["mesh"].erase("tp");
  auto r = step_from_json(bad);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().to_string().find("\"tp\""), std::string::npos) << r.status().to_string();
}

TEST(StepJson, MissingAndMistypedFieldsAreNamed) {
  auto r = step_from_json(nlohmann::json{{"step", 1}, {"rank", 0}});
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find("step_s"), std::string::npos);
  r = step_from_json(nlohmann::json{{"step", 1}, {"rank", 0}, {"step_s", 1}, {"forward", "x"}});
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("forward"), std::string::npos);
}

TEST(StepJson, NullLossReadsAsNaN) {
  StepRecord r;
  r.loss = std::nan("");
  auto back = step_from_json(step_to_json(r));
  ASSERT_TRUE(back.is_ok());
  EXPECT_TRUE(std::isnan(back->loss));
}

TEST(MetricsWriter, WritesOneParsableLinePerRecordFromManyThreads) {
  testing::TempDir tmp;
  std::string path = tmp.file("metrics.jsonl");
  auto w = MetricsWriter::open(path);
  ASSERT_TRUE(w.is_ok()) << w.status().to_string();
  constexpr int kThreads = 4, kPerThread = 200;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        StepRecord r;
        r.rank = t;
        r.step = i;
        r.step_s = 0.1;
        ASSERT_TRUE((*w)->write_step(r).is_ok());
      }
    });
  }
  for (auto &th : threads) th.join();
  ASSERT_TRUE((*w)->write_eval(200, 0.3, 0.9).is_ok());
  ASSERT_TRUE((*w)->write_eval(201, 0.2, std::nullopt).is_ok());
  // Flushed per line: readable before the writer closes.
  auto lines = read_lines(path);
  ASSERT_EQ(lines.size(), static_cast<size_t>(kThreads * kPerThread + 2));
  std::set<std::pair<int, int>> seen;
  for (size_t i = 0; i < kThreads * kPerThread; ++i) {
    auto r = step_from_json(lines[i]);
    ASSERT_TRUE(r.is_ok());
    seen.insert({r->rank, static_cast<int>(r->step)});
  }
  EXPECT_EQ(seen.size(), static_cast<size_t>(kThreads * kPerThread));
  EXPECT_EQ(lines[kThreads * kPerThread]["type"], "eval");
  EXPECT_EQ(lines[kThreads * kPerThread]["eval_accuracy"], 0.9);
  EXPECT_FALSE(lines.back().contains("eval_accuracy"));
}

TEST(MetricsWriter, OpenFailureNamesThePath) {
  auto w = MetricsWriter::open("/nonexistent-dir-kiln/metrics.jsonl");
  ASSERT_FALSE(w.is_ok());
  EXPECT_NE(w.status().message().find("/nonexistent-dir-kiln/metrics.jsonl"), std::string::npos);
}

}  // namespace
}  // namespace kiln::diag
