#include "kiln/plan/gpu_catalog.h"

#include <algorithm>
#include <cctype>
#include <utility>

namespace kiln::plan {

const std::vector<GpuSpec>& gpu_catalog() {
  // Sources: NVIDIA A100 datasheet (2021), H100 datasheet (SXM5), H200
  // product brief, DGX B200 datasheet (1,440 GB over 8 GPUs = 180 GB each).
  // NIC: one ConnectX-6 200 Gb/s (DGX A100) or ConnectX-7 400 Gb/s (DGX
  // H100/H200/B200) compute NIC per GPU.
  //
  // On-chip rates: SMs × per-SM rate × the clock that gives the quoted tensor
  // peak (A100: 108 SMs, 2,048 dense bf16 FLOP/clk per SM, 1.41 GHz; H100 and
  // H200 SXM: 132 SMs, 4,096 FLOP/clk, 1.83 GHz; B200: 148 SMs at ~1.86 GHz).
  // Shared memory serves 128 B/clk per SM and the SFUs 16 exponentials/clk
  // per SM on all three generations (CUDA C++ Programming Guide, arithmetic
  // instruction throughput; FlashAttention-3 paper §3 for the H100 figure).
  constexpr double kSmemBytesPerClk = 128;
  constexpr double kExpPerClk = 16;
  auto sm = [](double sms, double clock_hz) {
    return std::pair{sms * kSmemBytesPerClk * clock_hz, sms * kExpPerClk * clock_hz};
  };
  const auto a100 = sm(108, 1.41e9);
  const auto h100 = sm(132, 1.83e9);
  const auto b200 = sm(148, 1.86e9);
  static const std::vector<GpuSpec> kCatalog = {
      {"a100-sxm-40g", "NVIDIA A100 SXM4 40GB", 312e12, 40e9, 1.555e12, 600e9, 200e9, 25e9,
       a100.first, a100.second},
      {"a100-sxm-80g", "NVIDIA A100 SXM4 80GB", 312e12, 80e9, 2.039e12, 600e9, 200e9, 25e9,
       a100.first, a100.second},
      {"h100-sxm", "NVIDIA H100 SXM5 80GB", 989e12, 80e9, 3.35e12, 900e9, 400e9, 50e9, h100.first,
       h100.second},
      {"h200", "NVIDIA H200 SXM 141GB", 989e12, 141e9, 4.8e12, 900e9, 400e9, 50e9, h100.first,
       h100.second},
      {"b200", "NVIDIA B200 180GB", 2250e12, 180e9, 8.0e12, 1800e9, 400e9, 50e9, b200.first,
       b200.second},
  };
  return kCatalog;
}

namespace {
std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}
}  // namespace

Result<GpuSpec> find_gpu(std::string_view id) {
  const std::string want = lower(id);
  std::string known;
  for (const auto& g : gpu_catalog()) {
    if (g.id == want) return g;
    known += (known.empty() ? "" : ", ") + g.id;
  }
  return not_found("unknown GPU type '" + std::string(id) + "' (catalog: " + known + ")");
}

bool is_ampere(const GpuSpec& gpu) { return gpu.id.rfind("a100", 0) == 0; }

}  // namespace kiln::plan
