// How fast kernels run on a GPU: the planner's one efficiency model.
//
// One set of constants serves every GPU, model and layout (no per-run tuning);
// the shape of the work decides how close to peak it gets:
//   * A GEMM (M×K by K×N) costs its FLOPs at a sustained fraction of dense peak
//     plus its operand traffic at a fraction of HBM bandwidth, plus a launch:
//       t = 2MNK / (f_gemm · peak) + 2(MK + KN + MN) / (f_hbm · BW) + t_launch
//     so efficiency rises with arithmetic intensity and falls toward the
//     roofline ridge (peak/BW) for thin or small GEMMs: see Note [GEMM model].
//   * Memory-bound kernels (norms, activations, dropout, softmax, optimizer)
//     cost their bytes at f_hbm · BW.
//   * FlashAttention runs its (causal, half) FLOPs at f_flash · peak.
// Links use the alpha-beta constants at the bottom (comm.h).
#pragma once

#include "kiln/plan/gpu_catalog.h"

namespace kiln::plan {

struct EfficiencyModel {
  double gemm_peak_fraction = 0.80;       // large bf16 GEMMs (cuBLAS on A100/H100: 75-85%)
  double hbm_fraction = 0.85;             // streaming kernels, of the datasheet bandwidth
  double kernel_launch_s = 4e-6;          // per kernel, not hidden by a CUDA graph
  double flash_attention_fraction = 0.5;  // FlashAttention-2 fwd+bwd, of dense peak
  double nvlink_fraction = 0.80;          // NCCL bus bandwidth / per-direction NVLink
  double nic_fraction = 0.85;             // NCCL bus bandwidth / NIC line rate
  double nvlink_alpha_s = 5e-6;           // per ring step inside a node
  double nic_alpha_s = 8e-6;              // per ring step across nodes
  // Communication hidden behind compute is not free: NCCL kernels take SMs
  // and HBM bandwidth from the GEMMs they overlap. Each hidden second of DP /
  // ZeRO traffic costs this many seconds of compute.
  double overlap_interference = 0.15;

  static const EfficiencyModel& defaults();
};

// Seconds for `batch` GEMMs of M×K by K×N in bf16.
double gemm_time_s(const GpuSpec& gpu, const EfficiencyModel& e, double m, double n, double k,
                   double batch = 1);

// Achieved fraction of dense peak of that GEMM.
double gemm_efficiency(const GpuSpec& gpu, const EfficiencyModel& e, double m, double n, double k);

// Seconds to stream `bytes` through HBM (memory-bound kernels).
double memory_time_s(const GpuSpec& gpu, const EfficiencyModel& e, double bytes);

// Seconds for FlashAttention doing `flops` of (already halved causal) work.
double flash_attention_time_s(const GpuSpec& gpu, const EfficiencyModel& e, double flops);

}  // namespace kiln::plan
