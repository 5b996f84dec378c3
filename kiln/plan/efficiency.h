// How fast kernels run on a GPU: the planner's one efficiency model.
//
// One set of constants serves every GPU, model and layout (no per-run tuning);
// the shape of the work decides how close to peak it gets:
//   * A GEMM (M×K by K×N) costs its FLOPs at a sustained fraction of dense peak,
//     plus feeding its operands through shared memory (an Mt×Nt output tile
//     reads 1/Mt + 1/Nt bytes per FLOP), plus its matrices' HBM traffic, plus
//     a launch:
//       t = 2MNK/(f_gemm·peak) + 2MNK(1/Mt + 1/Nt)/smem_BW + 2(MK+KN+MN)/(f_hbm·BW) + t_launch
//     so efficiency rises with arithmetic intensity and falls toward the
//     roofline ridge (peak/BW) for thin or small GEMMs: see Note [GEMM model].
//   * Memory-bound kernels (norms, activations, dropout, softmax, optimizer)
//     cost their bytes at f_hbm · BW, plus a launch each.
//   * FlashAttention runs its (causal, half) MMAs at f_flash · peak and its
//     exponentials on the SFUs: see Note [FlashAttention model].
// Links use the alpha-beta constants at the bottom (comm.h).
#pragma once

#include "kiln/plan/gpu_catalog.h"

namespace kiln::plan {

// How the tensor cores get their operands: a property of the software stack
// (which instructions its kernels were compiled to), not of the GPU alone.
// See Note [Synchronous and asynchronous MMA].
enum class MmaIssue {
  kSync,   // mma.sync: warps load operands from shared memory into registers, then issue
  kAsync,  // wgmma.mma_async (Hopper, CUDA >= 12.0): the MMA reads shared memory itself
};

struct EfficiencyModel {
  // Fitted on the vendored runs (examples/plan/runs, `kiln plan validate --fit`):
  double gemm_peak_fraction = 0.915;       // MMA issue rate of large bf16 GEMMs, of dense peak
  double hbm_fraction = 0.85;              // streaming kernels, of the datasheet bandwidth
  double kernel_launch_s = 4e-6;           // per kernel, not hidden by a CUDA graph
  double flash_attention_fraction = 0.31;  // FlashAttention-2 MMAs, of dense peak (fitted)
  double nvlink_fraction = 0.80;           // NCCL bus bandwidth / per-direction NVLink
  double nic_fraction = 0.90;              // NCCL bus bandwidth / NIC line rate (InfiniBand)
  // Per ring step; NCCL's own tuning model uses about 0.6-1 µs inside a
  // node and 2.7-4 µs across (LL/LL128 protocols, src/graph/tuning.cc).
  double nvlink_alpha_s = 1e-6;  // per ring step inside a node
  double nic_alpha_s = 4e-6;     // per ring step across nodes
  // Communication hidden behind compute is not free: NCCL kernels take SMs
  // and HBM bandwidth from the GEMMs they overlap. Each hidden second of DP /
  // ZeRO / overlapped TP traffic costs this many seconds of compute (fitted).
  double overlap_interference = 0.53;

  static const EfficiencyModel& defaults();
};

// Seconds for `batch` GEMMs of M×K by K×N in bf16.
double gemm_time_s(const GpuSpec& gpu, const EfficiencyModel& e, MmaIssue mma, double m, double n,
                   double k, double batch = 1);

// Achieved fraction of dense peak of that GEMM.
double gemm_efficiency(const GpuSpec& gpu, const EfficiencyModel& e, MmaIssue mma, double m,
                       double n, double k);

// Seconds to stream `bytes` through HBM (memory-bound kernels).
double memory_time_s(const GpuSpec& gpu, const EfficiencyModel& e, double bytes);

// Seconds for FlashAttention doing `flops` of (already halved causal) work
// with heads of `head_dim`: see Note [FlashAttention model].
double flash_attention_time_s(const GpuSpec& gpu, const EfficiencyModel& e, MmaIssue mma,
                              double flops, double head_dim);

}  // namespace kiln::plan
