// Accelerator utilisation and memory through NVML, loaded at run time with
// dlopen("libnvidia-ml.so.1") so Kiln neither links nor needs it: on a
// machine without the library (or without a GPU) load() says why and the
// sampler reports "not available".
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/diag/system_sample.h"

namespace kiln::diag {

class Nvml {
 public:
  // The process-wide instance (NVML is initialised once and never shut
  // down: nvmlShutdown while another thread samples would be a race).
  // Unavailable with the reason when the library, its symbols, nvmlInit or
  // every device is missing. Thread-safe.
  static Result<Nvml*> load();

  // Devices sampled: those named by a numeric CUDA_VISIBLE_DEVICES, else all.
  const std::vector<int>& devices() const { return devices_; }

  // One reading per device; a device whose query fails is left out.
  // Thread-safe (NVML is).
  std::vector<GpuSample> sample() const;

  struct Api;  // the resolved entry points (nvml.cc)

 private:
  Nvml() = default;
  static Result<Nvml*> create();
  std::unique_ptr<Api> api_;
  std::vector<int> devices_;
  std::vector<void*> handles_;  // nvmlDevice_t, parallel to devices_
};

}  // namespace kiln::diag
