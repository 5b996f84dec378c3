// Fitting the efficiency model's few global constants to measured runs, and
// leave-one-source-out cross-validation (LOSO) of the whole model.
//
// The planner has one set of constants for every GPU, model and layout
// (efficiency.h). fit_efficiency() moves a named subset of them, each within
// physical bounds, to minimise the mean |log(predicted / measured)| over the
// runs; leave_one_source_out() fits on every source but one and predicts the
// held-out source's runs, for each source in turn. Its errors are the honest
// measure of how the model does on runs it was not fitted to: a source (one
// paper, one benchmark table) shares software, cluster and measurement
// habits, so holding out single rows would flatter the model.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "kiln/plan/validate.h"

namespace kiln::plan {

struct FitParameter {
  std::string_view name;
  double EfficiencyModel::*field;
  double min, max;  // physical bounds
};

// The constants a fit may move: the GEMM issue fraction of dense peak,
// FlashAttention's MMA fraction of peak and the cost of hiding communication
// behind compute. Everything else in EfficiencyModel is a datasheet or
// protocol figure and stays put, so a fit cannot bend bandwidths to hide a
// missing term.
const std::vector<FitParameter>& fit_parameters();

struct FitSample {
  PlanConfig config;
  double measured_s = 0;
};

// Coordinate descent in log space from `start`, steps halving from 20% to
// 0.5%; deterministic. Samples that cannot be planned are skipped.
EfficiencyModel fit_efficiency(const std::vector<FitSample>& samples,
                               const EfficiencyModel& start = EfficiencyModel::defaults());

// Mean |log(predicted / measured)| of `e` over the samples.
double fit_loss(const std::vector<FitSample>& samples, const EfficiencyModel& e);

struct LosoRow {
  std::string name, source_id, run_class;
  double predicted_s = 0, measured_s = 0, error = 0;
};

struct LosoFold {
  std::string source_id;
  int runs = 0;
  EfficiencyModel fitted;  // fitted on every other source
};

struct LosoReport {
  std::vector<LosoRow> rows;  // every measured, plannable row, predicted by the fold holding it out
  std::vector<LosoFold> folds;
  std::optional<double> median_abs_error, max_abs_error;
};

// Folds by ValidationRow::source_id; rows without a measurement or a plan are left out.
LosoReport leave_one_source_out(const ValidationReport& report,
                                const EfficiencyModel& start = EfficiencyModel::defaults());

}  // namespace kiln::plan
