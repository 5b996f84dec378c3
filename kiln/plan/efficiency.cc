#include "kiln/plan/efficiency.h"

#include <algorithm>

namespace kiln::plan {

namespace {
// Output tile of the large-GEMM kernels cuBLAS and CUTLASS pick for
// transformer shapes (128 × 256).
constexpr double kGemmTileM = 128;
constexpr double kGemmTileN = 256;
}  // namespace

const EfficiencyModel& EfficiencyModel::defaults() {
  static const EfficiencyModel kDefaults;
  return kDefaults;
}

// Note [GEMM model]
// A sum, not a max, of three times: issuing the MMAs, feeding their operands
// through shared memory, and streaming the matrices through HBM. Real GEMM
// kernels overlap these only partly (prologue/epilogue, tile quantisation, L2
// misses), and the sum reproduces the measured shape of cuBLAS efficiency vs
// size: near its best for 8k-cubed GEMMs, ~10% lower when one dimension is
// ~2k, under 50% for skinny attention-score GEMMs whose K is a 64-128 head
// dimension.
// The operand feed: an Mt×Nt output tile loads (Mt + Nt) bf16 operands per k
// step for its 2·Mt·Nt FLOPs, so every FLOP costs (1/Mt + 1/Nt) bytes of
// shared-memory bandwidth. Hopper doubled the tensor rate per SM and kept
// 128 B/clk of shared memory, which is why the same GEMM reaches a smaller
// fraction of peak on H100 (~63% for 8k-cubed) than on A100 (~74%).
// A batched GEMM is one launch.
//
// Note [Synchronous and asynchronous MMA]
// With mma.sync (Ampere's instruction, and the only one a Hopper kernel can
// use when built with CUDA < 12.0) the warps that issue the MMAs first load
// their operands from shared memory into registers (ldmatrix): the operand
// feed and the MMAs take turns, hence the sum above. Hopper's
// wgmma.mma_async (PTX ISA 8.0, CUDA 12.0, target sm_90a) reads both
// operands from shared memory itself while the warpgroup goes on issuing,
// and TMA fills shared memory without the warps: the feed runs under the
// MMAs, so a GEMM costs the longer of the two. At 8k cubed that is ~80% of
// H100 peak instead of ~63%, where cuBLAS 12 measures. FlashAttention-3 and
// cuDNN's fused attention use the same instructions and ping-pong two
// warpgroups so one's softmax exponentials run under the other's MMAs
// (Shah et al. 2024, §3.1): there too the longer of the two, not the sum.
double gemm_time_s(const GpuSpec& gpu, const EfficiencyModel& e, MmaIssue mma, double m, double n,
                   double k, double batch) {
  const double flops = 2 * m * n * k;
  const double bytes = 2 * (m * k + k * n + m * n);
  const double tile_m = std::min(m, kGemmTileM), tile_n = std::min(n, kGemmTileN);
  // Per k step: (Mt + Nt) bf16 operands for 2·Mt·Nt FLOPs.
  const double operand_bytes = flops * (1 / tile_m + 1 / tile_n);
  const double issue_s = flops / (e.gemm_peak_fraction * gpu.peak_bf16_flops);
  const double feed_s = operand_bytes / gpu.smem_bytes_per_s;
  const double core_s = mma == MmaIssue::kAsync ? std::max(issue_s, feed_s) : issue_s + feed_s;
  return batch * (core_s + bytes / (e.hbm_fraction * gpu.hbm_bytes_per_s)) + e.kernel_launch_s;
}

double gemm_efficiency(const GpuSpec& gpu, const EfficiencyModel& e, MmaIssue mma, double m,
                       double n, double k) {
  return 2 * m * n * k / gpu.peak_bf16_flops / gemm_time_s(gpu, e, mma, m, n, k);
}

double memory_time_s(const GpuSpec& gpu, const EfficiencyModel& e, double bytes) {
  return bytes / (e.hbm_fraction * gpu.hbm_bytes_per_s);
}

// Note [FlashAttention model]
// FlashAttention-2 computes the softmax's exponentials on the special
// function units between its two MMAs and does not overlap them: per score
// it does 4·d MMA FLOPs (QKᵀ and PV, d the head dimension) and one exp.
// On H100 the SFUs deliver 3.9 T exp/s against 989 TFLOP/s of MMA, so for
// d = 128 the exponentials take half as long as the MMAs (Shah et al. 2024,
// FlashAttention-3, §3): the same kernel reaches a smaller fraction of peak
// on H100 than on A100 (2.4 T exp/s against 312 TFLOP/s).
double flash_attention_time_s(const GpuSpec& gpu, const EfficiencyModel& e, MmaIssue mma,
                              double flops, double head_dim) {
  const double mma_s = flops / (e.flash_attention_fraction * gpu.peak_bf16_flops);
  const double exp_s = flops / (4 * head_dim) / gpu.exp_per_s;
  // Asynchronous MMAs let the exponentials run under them (Note [Synchronous
  // and asynchronous MMA]).
  return (mma == MmaIssue::kAsync ? std::max(mma_s, exp_s) : mma_s + exp_s) + e.kernel_launch_s;
}

}  // namespace kiln::plan
