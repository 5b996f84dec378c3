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
double gemm_time_s(const GpuSpec& gpu, const EfficiencyModel& e, double m, double n, double k,
                   double batch) {
  const double flops = 2 * m * n * k;
  const double bytes = 2 * (m * k + k * n + m * n);
  const double tile_m = std::min(m, kGemmTileM), tile_n = std::min(n, kGemmTileN);
  // Per k step: (Mt + Nt) bf16 operands for 2·Mt·Nt FLOPs.
  const double operand_bytes = flops * (1 / tile_m + 1 / tile_n);
  return batch * (flops / (e.gemm_peak_fraction * gpu.peak_bf16_flops) +
                  operand_bytes / gpu.smem_bytes_per_s +
                  bytes / (e.hbm_fraction * gpu.hbm_bytes_per_s)) +
         e.kernel_launch_s;
}

double gemm_efficiency(const GpuSpec& gpu, const EfficiencyModel& e, double m, double n, double k) {
  return 2 * m * n * k / gpu.peak_bf16_flops / gemm_time_s(gpu, e, m, n, k);
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
double flash_attention_time_s(const GpuSpec& gpu, const EfficiencyModel& e, double flops,
                              double head_dim) {
  const double exps = flops / (4 * head_dim);
  return flops / (e.flash_attention_fraction * gpu.peak_bf16_flops) + exps / gpu.exp_per_s +
         e.kernel_launch_s;
}

}  // namespace kiln::plan
