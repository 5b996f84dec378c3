// Which link each parallel group's collectives run on, and at what alpha and
// beta. The collectives themselves are priced by kiln/comm's cost model
// (kiln/comm/tuning.h: ring all-reduce, all-gather, reduce-scatter, p2p), the
// one kiln::comm uses to pick its algorithms (design principle 2).
#pragma once

#include <cstdint>
#include <string>

#include "kiln/comm/tuning.h"
#include "kiln/plan/config.h"
#include "kiln/plan/efficiency.h"

namespace kiln::plan {

struct Link {
  std::string name;     // "nvlink", "nic", "nic x8 (hierarchical)"
  comm::LinkCost cost;  // α per ring step, β effective one-direction bytes/s per GPU
};

// NVLink: quoted bidirectional aggregate / 2, times the achievable fraction.
Link nvlink_link(const ClusterSpec& cluster, const EfficiencyModel& e);
// NIC: line rate (bits) / 8, times the achievable fraction.
Link nic_link(const ClusterSpec& cluster, const EfficiencyModel& e);

// Links each parallel group uses, given rank order tp (fastest), dp, pp:
// the TP group is consecutive ranks; the DP group strides by tp; a pipeline
// stage holds tp·dp ranks.
Link tp_link(const PlanConfig& config, const EfficiencyModel& e);
// A DP group that spans nodes runs hierarchical rings: NCCL opens one ring
// per NIC and each leaves the node once, so a group with k members per node
// sees min(NVLink, k · NIC) per GPU. Every ring step that crosses nodes pays
// the NIC's α.
Link dp_link(const PlanConfig& config, const EfficiencyModel& e);
// The same for any group of `members` ranks `stride` ranks apart (the DP
// group: dp members, stride tp; a ZeRO-3 shard group: zero3_shards, stride
// tp; its replica group: zero3_replicas, stride tp · zero3_shards).
Link strided_group_link(const PlanConfig& config, const EfficiencyModel& e, std::int64_t members,
                        std::int64_t stride);
Link pp_link(const PlanConfig& config, const EfficiencyModel& e);
// A ring over nodes with `per_node` members each takes per_node − 1 NVLink
// steps and one NIC step per node: its mean step latency.
double ring_step_alpha_s(const EfficiencyModel& e, std::int64_t per_node);
// True when consecutive pipeline stages sit on different nodes.
bool pp_crosses_nodes(const PlanConfig& config);

}  // namespace kiln::plan
