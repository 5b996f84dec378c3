// Time of one training step on CPU hosts described by a measured profile
// (host_profile.h): Kiln's own miniature runs of the TP × PP × DP layouts,
// LibTorch eager in fp32, ranks sharing a host's cores.
//
// Per layer and micro-batch a rank does the work of kiln's GPT block
// (kiln/train/task.cc) on its tensor-parallel shard: four linear layers,
// the attention core on its local heads, norms, residual adds, GeLU and the
// rotary rotation, each priced forward and backward by the profile's
// measurement of that kernel class (Note [Composing a block]), and
// Megatron's 2 + 2 all-reduces of the activations on the tensor group,
// priced by kiln::comm's cost model over the profile's measured link.
//
// The schedule (1F1B, or interleaved with vpp > 1) is played out by
// pipeline_sim.h with processor sharing, since ranks may outnumber cores:
// see Note [Oversubscribed hosts] in host_step_time.cc, with the measured
// cost of sharing cores beyond fair shares (Note [Core sharing] in
// host_profile.h). After the pipeline
// each stage reduces its gradients over its DP group (kiln::ddp), the ranks
// agree on the global gradient norm (clipping) and all update at once.
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/plan/config.h"
#include "kiln/plan/pipeline_sim.h"

namespace kiln::plan {

// One transformer layer, one micro-batch, one rank, unshared speed.
struct HostLayerTime {
  double gemm_fwd_s = 0;         // the four linear layers
  double attention_fwd_s = 0;    // the attention core (products, mask, softmax, merge)
  double elementwise_fwd_s = 0;  // norms, residual adds, GeLU, rotary
  double forward_s = 0;          // the three above
  double backward_s = 0;
  double tp_comm_s = 0;          // the layer's four TP all-reduces (forward and backward)
};

struct HostStepTime {
  HostLayerTime layer;
  std::int64_t ranks_per_host = 1;
  int threads_per_rank = 1;
  int cores = 1;
  double oversubscription = 1;  // ranks · threads / cores (> 1: ranks share cores)
  // Note [Core sharing] (host_profile.h), at this oversubscription: compute
  // runs slowdown times slower than its fair share, and each blocking
  // message waits handoff_per_message_s for its peer to be scheduled.
  double sharing_slowdown = 1;
  double handoff_per_message_s = 0;
  // Note [Work between meetings] (host_profile.h): one rank's compute
  // between two of its tensor-parallel all-reduces, unshared (0 without
  // TP); sharing_slowdown is the pairs' at this work.
  double tp_work_between_messages_s = 0;
  double micro_batches = 0;
  std::vector<std::int64_t> stage_layers;
  // Per device, one micro-batch through all its chunks, unshared speed.
  std::vector<double> stage_forward_s, stage_backward_s;
  // Per device, the bytes one of its ranks sends to neighbour stages per
  // step (activations forward, their gradients backward): what the
  // runtime's pipeline engine counts as bytes_sent.
  std::vector<double> stage_p2p_bytes;
  int slowest_stage = 0;
  // Critical-path components; they add up to step_s. compute, TP comm and PP
  // p2p are the slowest stage's work at the steady state's share of the
  // cores; the bubble is what the schedule adds on top.
  double compute_s = 0;
  double tp_comm_s = 0;
  double pp_comm_s = 0;
  double handoff_s = 0;    // the slowest stage's blocking messages waiting for their peers
  double pp_bubble_s = 0;
  double dp_comm_s = 0;    // exposed gradient reduction after the last backward
  double optimizer_s = 0;  // global-norm agreement + the update
  double step_s = 0;
  // Narayanan's bubble of the same layout on dedicated devices, (p − 1)/(v·m),
  // and what the simulation gives as a fraction of the same ideal time.
  double bubble_formula = 0;
  double bubble_fraction = 0;
  PipelineSimResult pipeline;  // with the DP tails
};

// InvalidArgument unless config.cluster.host is set (a CPU host profile).
Result<HostStepTime> host_step_time(const PlanConfig& config);

// Seconds of one layer for the given profile rates; exposed for the tests'
// hand-computed cases.
HostLayerTime host_layer_time(const PlanConfig& config, int threads_per_rank);

}  // namespace kiln::plan
