#include "kiln/plan/validate.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>

#include "kiln/plan/fit.h"

namespace kiln::plan {
namespace {

const std::string kCalibration = std::string(KILN_RUNS_DIR) + "/calibration.csv";
const std::string kValidation = std::string(KILN_RUNS_DIR) + "/validation.csv";

constexpr const char* kHeader =
    "name,gpu,gpus,gpus_per_node,layers,hidden,heads,kv_heads,ffn_hidden,glu,seq_len,vocab,"
    "global_batch,micro_batch,tp,pp,dp,vpp,sequence_parallel,recompute,zero,measured_step_time_s,"
    "assumed,source\n";

TEST(ValidateTest, CalibrationMeetsTheAccuracyTarget) {
  auto r = validate_file(kCalibration);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  ASSERT_EQ(r->rows.size(), 10u);
  EXPECT_EQ(r->compared, 10);
  for (const auto& row : r->rows) {
    EXPECT_TRUE(row.problem.empty()) << row.name << ": " << row.problem;
    ASSERT_TRUE(row.error.has_value()) << row.name;
    EXPECT_LE(std::fabs(*row.error), 0.20) << row.name;
  }
  ASSERT_TRUE(r->median_abs_error.has_value());
  EXPECT_LE(*r->median_abs_error, 0.05);
  EXPECT_LE(*r->max_abs_error, 0.10);
}

// Issue 22's bar: every collected run predicted by constants fitted on the
// other sources, median |error| <= 10% and worst <= 25%; each class of run
// covered. docs/plan.md tabulates the run-by-run numbers.
TEST(ValidateTest, LeaveOneSourceOutMeetsTheTarget) {
  auto r = validate_files({kCalibration, kValidation});
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  for (const auto& row : r->rows)
    EXPECT_TRUE(row.problem.empty()) << row.name << ": " << row.problem;
  const LosoReport loso = leave_one_source_out(*r);
  EXPECT_EQ(loso.rows.size(), r->rows.size());
  EXPECT_GE(loso.folds.size(), 6u);
  ASSERT_TRUE(loso.median_abs_error.has_value());
  EXPECT_LE(*loso.median_abs_error, 0.10);
  EXPECT_LE(*loso.max_abs_error, 0.25);
  std::map<std::string, std::set<std::string>> sources_by_class;
  std::map<std::string, int> runs_by_class;
  for (const auto& row : loso.rows) {
    sources_by_class[row.run_class].insert(row.source_id);
    ++runs_by_class[row.run_class];
  }
  for (const char* cls : {"uneven", "large", "small", "zero3-scale"}) {
    EXPECT_GE(runs_by_class[cls], 3) << cls;
    EXPECT_GE(sources_by_class[cls].size(), 2u) << cls;
  }
}

TEST(ValidateTest, BadRowsAreReportedNotFatal) {
  const std::string csv =
      std::string(kHeader) +
      "good,a100-sxm-80g,32,8,24,2304,24,24,9216,0,2048,51200,512,1,1,1,32,1,0,full,0,3.528,,\n"
      "unknown gpu,v100,32,8,24,2304,24,24,9216,0,2048,51200,512,1,1,1,32,1,0,full,0,3.5,,\n"
      "bad "
      "product,a100-sxm-80g,32,8,24,2304,24,24,9216,0,2048,51200,512,1,2,1,32,1,0,full,0,3.5,,\n"
      "layers,a100-sxm-80g,32,8,1,2304,24,24,9216,0,2048,51200,512,1,1,2,16,1,0,full,0,3.5,,\n"
      "\"quoted, name\",a100-sxm-80g,32,8,24,2304,24,24,9216,0,2048,51200,512,1,1,1,32,1,0,full,0,,"
      "\"a, b\",src\n";
  auto table = parse_csv(csv, "mem.csv");
  ASSERT_TRUE(table.is_ok()) << table.status().to_string();
  auto r = validate_table(*table, "mem.csv");
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  ASSERT_EQ(r->rows.size(), 5u);
  EXPECT_TRUE(r->rows[0].problem.empty());
  EXPECT_NE(r->rows[1].problem.find("v100"), std::string::npos) << r->rows[1].problem;
  EXPECT_NE(r->rows[1].problem.find("mem.csv:3"), std::string::npos) << r->rows[1].problem;
  EXPECT_NE(r->rows[2].problem.find("tp*pp*dp"), std::string::npos) << r->rows[2].problem;
  EXPECT_NE(r->rows[3].problem.find("model.layers"), std::string::npos) << r->rows[3].problem;
  // Empty measurement: a prediction and no error.
  EXPECT_EQ(r->rows[4].name, "quoted, name");
  EXPECT_TRUE(r->rows[4].predicted_s.has_value());
  EXPECT_FALSE(r->rows[4].measured_s.has_value());
  EXPECT_FALSE(r->rows[4].error.has_value());
  EXPECT_EQ(r->compared, 1);
}

TEST(ValidateTest, UnevenStagesAreAccepted) {
  const std::string header =
      "name,gpu,gpus,layers,hidden,heads,seq_len,vocab,global_batch,tp,pp,dp,stage_layers,"
      "measured_step_time_s\n";
  const std::string csv = header +
                          "auto,a100-sxm-80g,64,70,14336,112,2048,250880,64,4,2,8,,\n"
                          "explicit,a100-sxm-80g,64,70,14336,112,2048,250880,64,4,2,8,34 36,\n"
                          "wrong sum,a100-sxm-80g,64,70,14336,112,2048,250880,64,4,2,8,34 35,\n"
                          "not a number,a100-sxm-80g,64,70,14336,112,2048,250880,64,4,2,8,34 x,\n";
  auto r = validate_table(*parse_csv(csv, "u.csv"), "u.csv");
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  ASSERT_EQ(r->rows.size(), 4u);
  EXPECT_TRUE(r->rows[0].predicted_s.has_value()) << r->rows[0].problem;
  EXPECT_TRUE(r->rows[1].predicted_s.has_value()) << r->rows[1].problem;
  // 36 layers on the last stage (which also runs the loss) is slower than 35/35.
  EXPECT_GT(*r->rows[1].predicted_s, *r->rows[0].predicted_s);
  EXPECT_NE(r->rows[2].problem.find("sum to 69"), std::string::npos) << r->rows[2].problem;
  EXPECT_NE(r->rows[3].problem.find("stage_layers"), std::string::npos) << r->rows[3].problem;
  EXPECT_NE(r->rows[3].problem.find("u.csv:5"), std::string::npos) << r->rows[3].problem;
}

TEST(ValidateTest, PredictOnlyFile) {
  const std::string csv =
      std::string(kHeader) +
      "a,h100-sxm,64,8,32,4096,32,8,14336,1,4096,128256,256,1,4,2,8,1,1,selective,1,,,\n";
  auto r = validate_table(*parse_csv(csv, "p.csv"), "p.csv");
  ASSERT_TRUE(r.is_ok());
  EXPECT_EQ(r->compared, 0);
  EXPECT_FALSE(r->median_abs_error.has_value());
  EXPECT_TRUE(r->rows[0].predicted_s.has_value()) << r->rows[0].problem;
}

TEST(ValidateTest, MissingColumnFailsTheFile) {
  auto r = validate_table(*parse_csv("name,gpu\nx,h100-sxm\n", "c.csv"), "c.csv");
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("gpus"), std::string::npos);
}

TEST(ValidateTest, UnterminatedQuoteIsDataLoss) {
  auto t = parse_csv("a,b\n\"x,1\n", "q.csv");
  ASSERT_FALSE(t.is_ok());
  EXPECT_EQ(t.status().code(), Code::kDataLoss);
}

TEST(ValidateTest, MissingFileIsNotFound) {
  EXPECT_EQ(validate_file("/nonexistent.csv").status().code(), Code::kNotFound);
}

}  // namespace
}  // namespace kiln::plan
