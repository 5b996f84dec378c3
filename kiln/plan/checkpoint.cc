#include "kiln/plan/checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace kiln::plan {

namespace {
constexpr double kCheckpointBytesPerParam = 14;
}

double young_interval_s(double c, double m) { return std::sqrt(2 * c * m); }

double daly_interval_s(double c, double m) {
  if (c >= 2 * m) return m;
  const double r = c / (2 * m);
  return std::sqrt(2 * c * m) * (1 + std::sqrt(r) / 3 + r / 9) - c;
}

double expected_goodput(double tau, double c, double r, double m) {
  if (tau <= 0 || m <= 0) return 0;
  return tau / (m * std::exp(r / m) * std::expm1((tau + c) / m));
}

CheckpointPlan plan_checkpoints(const PlanConfig& config, const ParamCount& params, double step_s) {
  const auto& rel = config.reliability;
  CheckpointPlan cp;
  cp.size_bytes = params.total * kCheckpointBytesPerParam;
  cp.write_s = cp.size_bytes / config.cluster.storage_write_bytes_per_s;
  if (rel.async_checkpoint) {
    // Each GPU copies its shard to host memory; the write runs in the background.
    const double shard = cp.size_bytes / static_cast<double>(config.cluster.gpus());
    cp.blocking_s = shard / config.cluster.gpu.host_copy_bytes_per_s;
  } else {
    cp.blocking_s = cp.write_s;
  }
  cp.mtbf_s = rel.job_mtbf_s;
  cp.restart_s = rel.restart_s;
  cp.young_interval_s = young_interval_s(cp.blocking_s, cp.mtbf_s);
  cp.daly_interval_s = daly_interval_s(cp.blocking_s, cp.mtbf_s);
  if (rel.async_checkpoint) {
    // A background write must finish before the next one starts.
    cp.daly_interval_s = std::max(cp.daly_interval_s, cp.write_s);
  }
  cp.daly_interval_steps = step_s > 0 ? cp.daly_interval_s / step_s : 0;
  cp.goodput_at_daly = expected_goodput(cp.daly_interval_s, cp.blocking_s, cp.restart_s, cp.mtbf_s);

  char buf[512];
  if (rel.checkpoint_every_steps > 0) {
    cp.configured_interval_s = static_cast<double>(rel.checkpoint_every_steps) * step_s;
    cp.goodput_at_configured =
        expected_goodput(cp.configured_interval_s, cp.blocking_s, cp.restart_s, cp.mtbf_s);
    const double ratio = cp.configured_interval_s / cp.daly_interval_s;
    const char* judgement = ratio > 1.5    ? "too rare"
                            : ratio < 0.67 ? "too frequent"
                                           : "close to optimal";
    std::snprintf(buf, sizeof buf,
                  "checkpoint every %lld steps = %.0f s is %s: %.1fx Daly's optimum of %.0f s "
                  "(%.0f steps); expected goodput %.1f%% vs %.1f%% at the optimum",
                  static_cast<long long>(rel.checkpoint_every_steps), cp.configured_interval_s,
                  judgement, ratio, cp.daly_interval_s, cp.daly_interval_steps,
                  100 * cp.goodput_at_configured, 100 * cp.goodput_at_daly);
  } else {
    std::snprintf(buf, sizeof buf,
                  "checkpoint every %.0f s (%.0f steps, Daly); expected goodput %.1f%%",
                  cp.daly_interval_s, std::ceil(cp.daly_interval_steps), 100 * cp.goodput_at_daly);
  }
  cp.verdict = buf;
  return cp;
}

}  // namespace kiln::plan
