#include "kiln/plan/gpu_catalog.h"

#include <algorithm>
#include <cctype>

namespace kiln::plan {

const std::vector<GpuSpec>& gpu_catalog() {
  // Sources: NVIDIA A100 datasheet (2021), H100 datasheet (SXM5), H200
  // product brief, DGX B200 datasheet (1,440 GB over 8 GPUs = 180 GB each).
  // NIC: one ConnectX-6 200 Gb/s (DGX A100) or ConnectX-7 400 Gb/s (DGX
  // H100/H200/B200) compute NIC per GPU.
  static const std::vector<GpuSpec> kCatalog = {
      {"a100-sxm-40g", "NVIDIA A100 SXM4 40GB", 312e12, 40e9, 1.555e12, 600e9, 200e9, 25e9},
      {"a100-sxm-80g", "NVIDIA A100 SXM4 80GB", 312e12, 80e9, 2.039e12, 600e9, 200e9, 25e9},
      {"h100-sxm", "NVIDIA H100 SXM5 80GB", 989e12, 80e9, 3.35e12, 900e9, 400e9, 50e9},
      {"h200", "NVIDIA H200 SXM 141GB", 989e12, 141e9, 4.8e12, 900e9, 400e9, 50e9},
      {"b200", "NVIDIA B200 180GB", 2250e12, 180e9, 8.0e12, 1800e9, 400e9, 50e9},
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
