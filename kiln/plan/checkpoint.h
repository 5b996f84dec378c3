// Checkpoint cost and the interval that minimises lost time.
//
//   Young (1974), "A first order approximation to the optimum checkpoint
//   interval": τ = √(2·C·M).
//   Daly (2006), "A higher order estimate of the optimum checkpoint interval
//   for restart dumps", eq. 37:
//     τ = √(2CM)·[1 + ⅓·√(C/(2M)) + (C/(2M))/9] − C   for C < 2M, else τ = M.
//   Expected wall time for solve time T_s (Daly eq. 13, exponential failures):
//     T_w = M·e^{R/M}·(e^{(τ+C)/M} − 1)·T_s/τ, so goodput = τ / (M·e^{R/M}·(e^{(τ+C)/M} − 1)).
// C: seconds the job stops per checkpoint; M: job MTBF; R: restart time; τ:
// compute time between checkpoints.
#pragma once

#include <string>

#include "kiln/plan/config.h"
#include "kiln/plan/flops.h"

namespace kiln::plan {

double young_interval_s(double checkpoint_s, double mtbf_s);
double daly_interval_s(double checkpoint_s, double mtbf_s);
// Fraction of wall time that is useful progress.
double expected_goodput(double interval_s, double checkpoint_s, double restart_s, double mtbf_s);

struct CheckpointPlan {
  double size_bytes = 0;  // bf16 weights + fp32 master + Adam m, v: 14 B/param
  double write_s = 0;     // size / storage write bandwidth
  double blocking_s = 0;  // C: write_s, or the device-to-host copy when async
  double mtbf_s = 0;
  double restart_s = 0;
  double young_interval_s = 0;
  double daly_interval_s = 0;
  double daly_interval_steps = 0;
  double goodput_at_daly = 0;
  // The configured interval (checkpoint_every_steps), if any.
  double configured_interval_s = 0;
  double goodput_at_configured = 0;
  std::string verdict;
};

CheckpointPlan plan_checkpoints(const PlanConfig& config, const ParamCount& params, double step_s);

}  // namespace kiln::plan
