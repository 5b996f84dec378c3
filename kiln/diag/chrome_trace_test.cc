#include "kiln/diag/chrome_trace.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kiln/diag/testing/temp_dir.h"

namespace kiln::diag {
namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

StepRecord step(std::int64_t n, double t0) {
  StepRecord r;
  r.step = n;
  r.rank = 1;
  r.start_unix_s = t0;
  r.step_s = 0.1;
  r.loss = 2.0 / (n + 1);
  r.spans = {{Phase::kDataWait, 0.0, 0.02},
             {Phase::kForward, 0.02, 0.03},
             {Phase::kCheckpointStall, 0.06, 0.01},
             {Phase::kBackward, 0.05, 0.04}};  // ends last, encloses the stall
  return r;
}

TEST(ChromeTrace, ClosedFileIsAJsonArrayOfNestedCompleteEvents) {
  testing::TempDir tmp;
  auto w = ChromeTraceWriter::open(tmp.file("trace.json"), 1);
  ASSERT_TRUE(w.is_ok()) << w.status().to_string();
  ASSERT_TRUE((*w)->add_step(step(0, 1.7e9)).is_ok());
  ASSERT_TRUE((*w)->add_step(step(1, 1.7e9 + 0.1)).is_ok());
  ASSERT_TRUE((*w)->add_counter("utilisation", 1.7e9 + 0.05, {{"cpu", 0.5}}).is_ok());
  ASSERT_TRUE((*w)->close().is_ok());
  EXPECT_EQ((*w)->add_step(step(2, 0)).code(), Code::kFailedPrecondition);

  auto events = nlohmann::json::parse(slurp(tmp.file("trace.json")));
  ASSERT_TRUE(events.is_array());
  int steps = 0, phases = 0, counters = 0;
  nlohmann::json current_step;
  for (const auto& e : events) {
    EXPECT_EQ(e["pid"], 1);
    if (e["ph"] == "X" && e["cat"] == "step") {
      ++steps;
      current_step = e;
    } else if (e["ph"] == "X") {
      ++phases;
      EXPECT_EQ(e["cat"], "phase");
      // Nested within its step on the same track.
      EXPECT_EQ(e["tid"], current_step["tid"]);
      EXPECT_GE(e["ts"].get<double>(), current_step["ts"].get<double>());
      EXPECT_LE(e["ts"].get<double>() + e["dur"].get<double>(),
                current_step["ts"].get<double>() + current_step["dur"].get<double>() + 1e-3);
    } else if (e["ph"] == "C") {
      ++counters;
    }
  }
  EXPECT_EQ(steps, 2);
  EXPECT_EQ(phases, 8);
  EXPECT_EQ(counters, 3);  // loss per step + the utilisation counter
  EXPECT_EQ(events[0]["name"], "process_name");
  EXPECT_EQ(events[0]["args"]["name"], "rank 1");
}

TEST(ChromeTrace, UnclosedTraceIsTheArrayFormatWithoutItsEnd) {
  testing::TempDir tmp;
  auto w = ChromeTraceWriter::open(tmp.file("trace.json"), 0);
  ASSERT_TRUE(w.is_ok());
  ASSERT_TRUE((*w)->add_step(step(0, 1.7e9)).is_ok());
  ASSERT_TRUE((*w)->flush().is_ok());
  // What a crash leaves: "[", events each followed by ",". Closing it by
  // hand must give valid JSON (what the trace viewers do internally).
  std::string text = slurp(tmp.file("trace.json"));
  ASSERT_EQ(text.substr(text.size() - 2), ",\n");
  auto events = nlohmann::json::parse(text.substr(0, text.size() - 2) + "]");
  EXPECT_GE(events.size(), 4u);
}

}  // namespace
}  // namespace kiln::diag
