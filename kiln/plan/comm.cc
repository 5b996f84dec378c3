#include "kiln/plan/comm.h"

#include <algorithm>

namespace kiln::plan {

Link nvlink_link(const ClusterSpec& c, const EfficiencyModel& e) {
  return {"nvlink", {e.nvlink_alpha_s, c.nvlink_bytes_per_s / 2 * e.nvlink_fraction}};
}

Link nic_link(const ClusterSpec& c, const EfficiencyModel& e) {
  return {"nic", {e.nic_alpha_s, c.nic_bits_per_s / 8 * e.nic_fraction}};
}

double ring_step_alpha_s(const EfficiencyModel& e, std::int64_t per_node) {
  const double k = static_cast<double>(std::max<std::int64_t>(1, per_node));
  return ((k - 1) * e.nvlink_alpha_s + e.nic_alpha_s) / k;
}

Link tp_link(const PlanConfig& c, const EfficiencyModel& e) {
  if (c.layout.tp <= c.cluster.gpus_per_node) return nvlink_link(c.cluster, e);
  return nic_link(c.cluster, e);
}

Link dp_link(const PlanConfig& c, const EfficiencyModel& e) {
  return strided_group_link(c, e, c.layout.dp, c.layout.tp);
}

Link strided_group_link(const PlanConfig& c, const EfficiencyModel& e, std::int64_t members,
                        std::int64_t stride) {
  const std::int64_t gpn = c.cluster.gpus_per_node;
  const Link nvl = nvlink_link(c.cluster, e);
  if (stride * members <= gpn) return nvl;
  const std::int64_t per_node =
      std::max<std::int64_t>(1, std::min(members, gpn / std::max<std::int64_t>(1, stride)));
  const Link nic = nic_link(c.cluster, e);
  const double k = static_cast<double>(per_node);
  return {per_node > 1 ? "nic x" + std::to_string(per_node) + " (hierarchical)" : "nic",
          {ring_step_alpha_s(e, per_node), std::min(nvl.cost.beta_bps, k * nic.cost.beta_bps)}};
}

bool pp_crosses_nodes(const PlanConfig& c) {
  // Some stage boundary leaves the node as soon as the job spans nodes; the
  // slowest boundary paces the pipeline.
  return c.layout.pp > 1 && c.layout.tp * c.layout.dp * c.layout.pp > c.cluster.gpus_per_node;
}

Link pp_link(const PlanConfig& c, const EfficiencyModel& e) {
  return pp_crosses_nodes(c) ? nic_link(c.cluster, e) : nvlink_link(c.cluster, e);
}

}  // namespace kiln::plan
