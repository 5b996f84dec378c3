#include "kiln/plan/fit.h"

#include <gtest/gtest.h>

#include <cmath>

#include "kiln/plan/step_time.h"

namespace kiln::plan {
namespace {

const std::string kRuns = std::string(KILN_RUNS_DIR);

PlanConfig gpt(std::int64_t layers, std::int64_t hidden, std::int64_t tp, std::int64_t pp,
               std::int64_t dp, int zero) {
  PlanConfig c;
  auto& m = c.model;
  m.layers = layers;
  m.hidden = hidden;
  m.heads = hidden / 128;
  m.kv_heads = m.heads;
  m.ffn_hidden = 4 * hidden;
  m.seq_len = 2048;
  m.vocab = 51200;
  m.set_family_defaults();
  c.cluster.gpu = *find_gpu("a100-sxm-80g");
  c.cluster.nodes = std::max<std::int64_t>(1, tp * pp * dp / 8);
  c.cluster.gpus_per_node = std::min<std::int64_t>(8, tp * pp * dp);
  c.cluster.nvlink_bytes_per_s = c.cluster.gpu.nvlink_bytes_per_s;
  c.cluster.nic_bits_per_s = c.cluster.gpu.nic_bits_per_s;
  c.layout.tp = tp;
  c.layout.pp = pp;
  c.layout.dp = dp;
  c.layout.zero = zero;
  c.layout.global_batch = 8 * dp;
  c.layout.attention = AttentionKernel::kUnfused;
  return c;
}

std::vector<FitSample> synthetic(const EfficiencyModel& truth) {
  std::vector<FitSample> out;
  for (const PlanConfig& c :
       {gpt(24, 2048, 1, 1, 8, 0), gpt(40, 6144, 8, 1, 4, 1), gpt(48, 8192, 8, 4, 8, 1),
        gpt(24, 4096, 1, 1, 256, 3), gpt(32, 5120, 1, 1, 1024, 3)}) {
    EXPECT_TRUE(check_layout(c).is_ok()) << check_layout(c).to_string();
    out.push_back({c, step_time(c, truth).step_s});
  }
  return out;
}

TEST(FitTest, RecoversTheConstantsThatMadeTheData) {
  EfficiencyModel truth;
  truth.gemm_peak_fraction = 0.7;
  truth.overlap_interference = 0.3;
  const auto samples = synthetic(truth);
  EXPECT_GT(fit_loss(samples, EfficiencyModel::defaults()), 0.05);
  const EfficiencyModel fitted = fit_efficiency(samples);
  // Several constants trade off against each other on five runs; the fit is
  // judged by what it predicts.
  EXPECT_LT(fit_loss(samples, fitted), 0.01);
  for (const auto& s : samples) {
    EXPECT_NEAR(step_time(s.config, fitted).step_s / s.measured_s, 1.0, 0.03);
  }
}

TEST(FitTest, StaysWithinPhysicalBounds) {
  EfficiencyModel truth;
  truth.gemm_peak_fraction = 0.95;
  auto samples = synthetic(truth);
  for (auto& s : samples) s.measured_s *= 0.3;  // faster than any constant allows
  const EfficiencyModel fitted = fit_efficiency(samples);
  for (const FitParameter& p : fit_parameters()) {
    EXPECT_GE(fitted.*p.field, p.min) << p.name;
    EXPECT_LE(fitted.*p.field, p.max) << p.name;
  }
}

TEST(FitTest, LeaveOneSourceOutHoldsOutWholeSources) {
  // Two sources made with the default constants: each predicts the other.
  const auto samples = synthetic(EfficiencyModel::defaults());
  ValidationReport report;
  for (size_t i = 0; i < samples.size(); ++i) {
    ValidationRow row;
    row.name = "run " + std::to_string(i);
    row.source_id = i < 2 ? "a" : "b";
    row.config = samples[i].config;
    row.measured_s = samples[i].measured_s;
    report.rows.push_back(row);
  }
  repredict(report, EfficiencyModel::defaults());
  const LosoReport loso = leave_one_source_out(report);
  ASSERT_EQ(loso.folds.size(), 2u);
  EXPECT_EQ(loso.folds[0].source_id, "a");
  EXPECT_EQ(loso.folds[0].runs, 2);
  EXPECT_EQ(loso.rows.size(), samples.size());
  ASSERT_TRUE(loso.max_abs_error.has_value());
  EXPECT_LT(*loso.max_abs_error, 0.01);
  // A source whose runs are 40% slower than the model can explain is
  // predicted by the others, not by itself: its error stays visible.
  for (auto& row : report.rows) {
    if (row.source_id == "b") *row.measured_s *= 1.4;
  }
  const LosoReport skewed = leave_one_source_out(report);
  EXPECT_GT(*skewed.max_abs_error, 0.2);
}

}  // namespace
}  // namespace kiln::plan
