#include "kiln/plan/fit.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "kiln/plan/step_time.h"

namespace kiln::plan {

const std::vector<FitParameter>& fit_parameters() {
  static const std::vector<FitParameter> kParams = {
      {"gemm_peak_fraction", &EfficiencyModel::gemm_peak_fraction, 0.5, 0.95},
      {"flash_attention_fraction", &EfficiencyModel::flash_attention_fraction, 0.2, 0.8},
      {"overlap_interference", &EfficiencyModel::overlap_interference, 0.0, 1.0},
  };
  return kParams;
}

double fit_loss(const std::vector<FitSample>& samples, const EfficiencyModel& e) {
  double sum = 0;
  int n = 0;
  for (const auto& s : samples) {
    if (check_layout(s.config).is_ok()) {
      sum += std::fabs(std::log(step_time(s.config, e).step_s / s.measured_s));
      ++n;
    }
  }
  return n > 0 ? sum / n : 0;
}

EfficiencyModel fit_efficiency(const std::vector<FitSample>& samples,
                               const EfficiencyModel& start) {
  EfficiencyModel best = start;
  double best_loss = fit_loss(samples, best);
  for (double step = 0.2; step >= 0.005; step /= 2) {
    bool improved = true;
    while (improved) {
      improved = false;
      for (const FitParameter& p : fit_parameters()) {
        for (double dir : {1.0, -1.0}) {
          EfficiencyModel trial = best;
          double& v = trial.*p.field;
          // Additive steps for a constant whose bounds include zero.
          v = p.min <= 0 ? v + dir * step * (p.max - p.min) : v * std::exp(dir * step);
          v = std::clamp(v, p.min, p.max);
          if (v == best.*p.field) continue;
          const double loss = fit_loss(samples, trial);
          if (loss < best_loss - 1e-12) {
            best = trial;
            best_loss = loss;
            improved = true;
          }
        }
      }
    }
  }
  return best;
}

LosoReport leave_one_source_out(const ValidationReport& report, const EfficiencyModel& start) {
  std::map<std::string, std::vector<const ValidationRow*>> by_source;
  for (const auto& row : report.rows) {
    if (row.config && row.measured_s && row.predicted_s) by_source[row.source_id].push_back(&row);
  }
  LosoReport out;
  std::vector<double> errors;
  for (const auto& [held_out, rows] : by_source) {
    std::vector<FitSample> train;
    for (const auto& [id, others] : by_source) {
      if (id == held_out) continue;
      for (const ValidationRow* r : others) train.push_back({*r->config, *r->measured_s});
    }
    LosoFold fold{held_out, static_cast<int>(rows.size()), fit_efficiency(train, start)};
    for (const ValidationRow* r : rows) {
      LosoRow lr{r->name, r->source_id, r->run_class};
      lr.measured_s = *r->measured_s;
      lr.predicted_s = step_time(*r->config, fold.fitted).step_s;
      lr.error = (lr.predicted_s - lr.measured_s) / lr.measured_s;
      errors.push_back(lr.error);
      out.rows.push_back(std::move(lr));
    }
    out.folds.push_back(std::move(fold));
  }
  const ErrorSummary sum = summarize_errors(std::move(errors));
  out.median_abs_error = sum.median_abs;
  out.max_abs_error = sum.max_abs;
  return out;
}

}  // namespace kiln::plan
