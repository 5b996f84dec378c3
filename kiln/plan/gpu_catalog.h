// Built-in catalog of training GPUs: the datasheet numbers the planner needs.
//
// Peaks are vendor dense (no sparsity) bf16 tensor-core throughput; bandwidths
// are the vendor figures. Achievable fractions of these live in the efficiency
// model (efficiency.h), never here.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "kiln/base/status.h"

namespace kiln::plan {

struct GpuSpec {
  std::string id;                    // catalog id, lower case: "h100-sxm"
  std::string display_name;          // "NVIDIA H100 SXM5 80GB"
  double peak_bf16_flops = 0;        // dense bf16 FLOP/s
  double hbm_bytes = 0;              // HBM capacity, bytes
  double hbm_bytes_per_s = 0;        // HBM bandwidth, bytes/s
  double nvlink_bytes_per_s = 0;     // per GPU, bidirectional aggregate as quoted (900e9 for H100)
  double nic_bits_per_s = 0;         // default NIC per GPU in the vendor's DGX/HGX node
  double host_copy_bytes_per_s = 0;  // device-to-host (PCIe) for checkpoint snapshots
  // On-chip limits the efficiency model needs (Note [GEMM model], Note
  // [FlashAttention model]), from SM count × per-SM rate × the clock at which
  // the vendor quotes the tensor peak:
  double smem_bytes_per_s = 0;  // shared-memory operand bandwidth, 128 B/clk per SM
  double exp_per_s = 0;         // special-function-unit exponentials, 16/clk per SM
};

// All catalog entries, in generation order.
const std::vector<GpuSpec>& gpu_catalog();

// Looks up `id` case-insensitively ("H100-SXM" == "h100-sxm"). NotFound names
// the id and lists the catalog.
Result<GpuSpec> find_gpu(std::string_view id);

// True for Ampere (A100): the published runs on it used Megatron's unfused
// attention kernels, so the planner assumes them there unless told otherwise.
bool is_ampere(const GpuSpec& gpu);

}  // namespace kiln::plan
