// Time of one training step: per-layer kernels, tensor-parallel collectives,
// the pipeline schedule with its bubble, data-parallel (or ZeRO) traffic and
// how much of it hides behind compute, and the optimizer update.
//
// Schedule (Narayanan et al. 2021, §2.2): with m micro-batches, stages whose
// micro-batch (forward + backward, all of a device's chunks) takes t_i, and v
// virtual stages per device, one step of (interleaved) 1F1B takes
//   m · max_i t_i + (Σ_i t_i − max_i t_i) / v
// The slowest stage paces the steady state; the others' fill and drain is the
// bubble. With p equal stages this is Narayanan's m·t + (p − 1)/v · t. Stages
// differ by their layer count (stages.h), the loss on the last one and the
// embedding gathers of ZeRO-3.
//
// Megatron-style TP collectives sit on the critical path unless
// tp_comm_overlap hides them behind the layer's GEMMs. DP gradient reduction
// overlaps the last micro-batch's backward when overlap_grad_reduce is set.
// ZeRO-3 gathers each unit (a layer, or each parameter tensor) before its
// forward, recomputed forward and backward and reduce-scatters its gradients
// after its backward; a unit's collectives hide behind the previous unit's
// compute, and what does not fit stays exposed: see Note [ZeRO-3 exposure].
#pragma once

#include <string>
#include <vector>

#include "kiln/plan/comm.h"
#include "kiln/plan/config.h"
#include "kiln/plan/efficiency.h"

namespace kiln::plan {

// One transformer layer, one micro-batch, one GPU.
struct LayerTime {
  double gemm_fwd_s = 0;         // the four weight GEMMs
  double attention_fwd_s = 0;    // attention core: score GEMMs + softmax, or FlashAttention
  double elementwise_fwd_s = 0;  // norms, activation, dropout, residual adds (with launches)
  double forward_s = 0;
  double backward_s = 0;
  double recompute_s = 0;
  double tp_comm_s = 0;        // all TP collectives of the layer
  double tp_exposed_s = 0;     // the part on the critical path (all of it without overlap)
  double gemm_efficiency = 0;  // achieved fraction of peak of the weight GEMMs
  double total_s = 0;          // forward + backward + recompute + tp_exposed
};

LayerTime layer_time(const PlanConfig& config, const EfficiencyModel& e);

struct CommVolume {
  std::string link;          // link class it runs on
  double bytes_per_gpu = 0;  // sent per GPU per step
  double time_s = 0;         // total time of those collectives per step
};

struct StepTime {
  LayerTime layer;
  double micro_batches = 0;
  std::vector<std::int64_t> stage_layers;  // layers per pipeline stage
  std::vector<double> stage_times_s;       // t_i: one micro-batch through stage i
  int slowest_stage = 0;
  double stage_s = 0;       // one micro-batch, fwd+bwd, on the slowest stage
  double last_stage_s = 0;  // the same on the stage that also computes the loss
  // Critical-path components; they add up to step_s.
  double compute_s = 0;    // kernels incl. recompute, m micro-batches, slowest stage
  double recompute_s = 0;  // the recompute part of compute_s
  double tp_comm_s = 0;
  double pp_comm_s = 0;  // point-to-point sends on the critical path
  double pp_bubble_s = 0;
  double dp_exposed_s = 0;  // DP / ZeRO traffic not hidden behind compute
  double optimizer_s = 0;
  double step_s = 0;
  // Communication per link class.
  CommVolume tp, pp, dp;
  double dp_overlap_fraction = 0;  // share of DP/ZeRO time hidden behind compute
};

StepTime step_time(const PlanConfig& config, const EfficiencyModel& e);

}  // namespace kiln::plan
