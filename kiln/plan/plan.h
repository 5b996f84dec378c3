// A plan: everything the planner predicts for one configuration.
#pragma once

#include <string>

#include "kiln/plan/checkpoint.h"
#include "kiln/plan/config.h"
#include "kiln/plan/efficiency.h"
#include "kiln/plan/flops.h"
#include "kiln/plan/memory.h"
#include "kiln/plan/step_time.h"

namespace kiln::plan {

struct Plan {
  PlanConfig config;
  ParamCount params;
  StepFlops flops;
  MemoryBreakdown memory;
  StepTime step;
  double tokens_per_s = 0;
  double mfu = 0;  // model FLOPs / (step time · GPUs · peak)
  double hfu = 0;  // the same with recompute counted
  // "memory" when it does not fit or uses over 95% of HBM; else the largest of
  // compute, tp_comm, pp_bubble (bubble + p2p), dp_comm (exposed).
  std::string bottleneck;
  std::string largest_overhead;  // the largest non-compute component
  CheckpointPlan checkpoint;
};

// Checks the layout (InvalidArgument naming the file and field) and predicts.
// Does not fail when memory does not fit: memory.fits says so.
Result<Plan> make_plan(const PlanConfig& config,
                       const EfficiencyModel& efficiency = EfficiencyModel::defaults());

}  // namespace kiln::plan
