#include "kiln/plan/plan.h"

#include <utility>
#include <vector>

namespace kiln::plan {

namespace {
// Design §7: accelerator memory above 95% is a memory bottleneck.
constexpr double kMemoryPressure = 0.95;
}  // namespace

Result<Plan> make_plan(const PlanConfig& config, const EfficiencyModel& efficiency) {
  KILN_RETURN_IF_ERROR(check_layout(config));
  Plan p;
  p.config = config;
  p.params = count_params(config.model);
  p.flops = step_flops(config.model, config.layout);
  p.memory = memory_per_gpu(config);
  p.step = step_time(config, efficiency);
  const double gpus = static_cast<double>(config.cluster.gpus());
  const double peak = config.cluster.gpu.peak_bf16_flops;
  p.tokens_per_s =
      static_cast<double>(config.layout.global_batch * config.model.seq_len) / p.step.step_s;
  p.mfu = p.flops.model / (p.step.step_s * gpus * peak);
  p.hfu = p.flops.hardware / (p.step.step_s * gpus * peak);

  const std::vector<std::pair<std::string, double>> overheads = {
      {"tp_comm", p.step.tp_comm_s},
      {"pp_bubble", p.step.pp_bubble_s + p.step.pp_comm_s},
      {"dp_comm", p.step.dp_exposed_s},
  };
  auto largest = overheads.front();
  for (const auto& o : overheads) {
    if (o.second > largest.second) largest = o;
  }
  p.largest_overhead = largest.second > 0 ? largest.first : "none";
  if (!p.memory.fits || p.memory.used_fraction > kMemoryPressure) {
    p.bottleneck = "memory";
  } else if (largest.second > p.step.compute_s) {
    p.bottleneck = largest.first;
  } else {
    p.bottleneck = "compute";
  }
  p.checkpoint = plan_checkpoints(config, p.params, p.step.step_s);
  return p;
}

}  // namespace kiln::plan
