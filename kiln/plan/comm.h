// Alpha-beta cost of the collectives a training step runs, per link class.
//
// t = steps·α + bytes_on_the_wire/β (Hockney; the ring forms of Thakur,
// Rabenseifner & Gropp 2005). β is the effective one-direction bandwidth a
// GPU gets on that link. kiln/comm/tuning is meant to own this model (design
// principle 2); until it lands the planner keeps its own copy here.
#pragma once

#include <cstdint>
#include <string>

#include "kiln/plan/config.h"
#include "kiln/plan/efficiency.h"

namespace kiln::plan {

struct Link {
  std::string name;        // "nvlink", "nic", "nic x8 (hierarchical)"
  double alpha_s = 0;      // per step
  double bytes_per_s = 0;  // effective, one direction, per GPU
};

// NVLink: quoted bidirectional aggregate / 2, times the achievable fraction.
Link nvlink_link(const ClusterSpec& cluster, const EfficiencyModel& e);
// NIC: line rate (bits) / 8, times the achievable fraction.
Link nic_link(const ClusterSpec& cluster, const EfficiencyModel& e);

// Ring collectives over n ranks; `bytes` is the full (unsharded) buffer.
double allreduce_time_s(const Link& link, std::int64_t n, double bytes);
double allgather_time_s(const Link& link, std::int64_t n, double bytes);
double reduce_scatter_time_s(const Link& link, std::int64_t n, double bytes);
double p2p_time_s(const Link& link, double bytes);

// Links each parallel group uses, given rank order tp (fastest), dp, pp:
// the TP group is consecutive ranks; the DP group strides by tp; a pipeline
// stage holds tp·dp ranks.
Link tp_link(const PlanConfig& config, const EfficiencyModel& e);
// When several DP members share a node, NCCL's rings leave the node once per
// channel and use every NIC of the node: the group sees
// min(NVLink, members_per_node · NIC) per GPU.
Link dp_link(const PlanConfig& config, const EfficiencyModel& e);
Link pp_link(const PlanConfig& config, const EfficiencyModel& e);
// True when consecutive pipeline stages sit on different nodes.
bool pp_crosses_nodes(const PlanConfig& config);

}  // namespace kiln::plan
