#include "kiln/plan/efficiency.h"

namespace kiln::plan {

const EfficiencyModel& EfficiencyModel::defaults() {
  static const EfficiencyModel kDefaults;
  return kDefaults;
}

// Note [GEMM model]
// A sum, not a max, of compute and traffic time: real GEMM kernels overlap the
// two only partly (prologue/epilogue, tile quantisation, L2 misses), and the sum
// reproduces the measured shape of cuBLAS efficiency vs size: ~80% of peak
// for 8k-cubed GEMMs, ~70% when one dimension is ~2k, under 50% for skinny
// attention-score GEMMs whose K is a 64-128 head dimension. A batched GEMM is
// one launch.
double gemm_time_s(const GpuSpec& gpu, const EfficiencyModel& e, double m, double n, double k,
                   double batch) {
  const double flops = 2 * m * n * k;
  const double bytes = 2 * (m * k + k * n + m * n);
  return batch * (flops / (e.gemm_peak_fraction * gpu.peak_bf16_flops) +
                  bytes / (e.hbm_fraction * gpu.hbm_bytes_per_s)) +
         e.kernel_launch_s;
}

double gemm_efficiency(const GpuSpec& gpu, const EfficiencyModel& e, double m, double n, double k) {
  return 2 * m * n * k / gpu.peak_bf16_flops / gemm_time_s(gpu, e, m, n, k);
}

double memory_time_s(const GpuSpec& gpu, const EfficiencyModel& e, double bytes) {
  return bytes / (e.hbm_fraction * gpu.hbm_bytes_per_s);
}

double flash_attention_time_s(const GpuSpec& gpu, const EfficiencyModel& e, double flops) {
  return flops / (e.flash_attention_fraction * gpu.peak_bf16_flops) + e.kernel_launch_s;
}

}  // namespace kiln::plan
