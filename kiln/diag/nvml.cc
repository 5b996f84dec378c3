#include "kiln/diag/nvml.h"

#include <dlfcn.h>

#include <charconv>
#include <cstdlib>
#include <string_view>

namespace kiln::diag {
namespace {

// The few NVML types used here, from nvml.h (stable C ABI).
using nvmlReturn_t = int;
using nvmlDevice_t = void*;
struct nvmlUtilization_t {
  unsigned int gpu;
  unsigned int memory;
};
struct nvmlMemory_t {
  unsigned long long total;
  unsigned long long free;
  unsigned long long used;
};
constexpr nvmlReturn_t kNvmlSuccess = 0;

// Numeric device ids from CUDA_VISIBLE_DEVICES; empty when unset or when it
// holds UUIDs (then every device is sampled).
std::vector<int> visible_devices() {
  const char* env = std::getenv("CUDA_VISIBLE_DEVICES");
  std::vector<int> out;
  if (env == nullptr) return out;
  std::string_view s(env);
  while (!s.empty()) {
    size_t comma = s.find(',');
    std::string_view tok = s.substr(0, comma);
    int v = 0;
    auto [p, ec] = std::from_chars(tok.data(), tok.data() + tok.size(), v);
    if (ec != std::errc() || p != tok.data() + tok.size() || v < 0) return {};
    out.push_back(v);
    if (comma == std::string_view::npos) break;
    s.remove_prefix(comma + 1);
  }
  return out;
}

}  // namespace

struct Nvml::Api {
  void* lib = nullptr;
  nvmlReturn_t (*init)() = nullptr;
  const char* (*error_string)(nvmlReturn_t) = nullptr;
  nvmlReturn_t (*device_count)(unsigned int*) = nullptr;
  nvmlReturn_t (*handle_by_index)(unsigned int, nvmlDevice_t*) = nullptr;
  nvmlReturn_t (*utilization)(nvmlDevice_t, nvmlUtilization_t*) = nullptr;
  nvmlReturn_t (*memory)(nvmlDevice_t, nvmlMemory_t*) = nullptr;
};

Result<Nvml*> Nvml::load() {
  // Function-local static: thread-safe, tried once per process.
  static const Result<Nvml*> instance = create();
  return instance;
}

Result<Nvml*> Nvml::create() {
  auto api = std::make_unique<Api>();
  api->lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (api->lib == nullptr) {
    const char* err = dlerror();
    return unavailable(std::string("NVML: cannot load libnvidia-ml.so.1: ") +
                       (err != nullptr ? err : "unknown error"));
  }
  auto sym = [&](const char* name, auto* fn) -> Status {
    void* p = dlsym(api->lib, name);
    if (p == nullptr) return unavailable(std::string("NVML: libnvidia-ml.so.1 lacks ") + name);
    *fn = reinterpret_cast<std::remove_pointer_t<decltype(fn)>>(p);
    return Status::ok();
  };
  KILN_RETURN_IF_ERROR(sym("nvmlInit_v2", &api->init));
  KILN_RETURN_IF_ERROR(sym("nvmlErrorString", &api->error_string));
  KILN_RETURN_IF_ERROR(sym("nvmlDeviceGetCount_v2", &api->device_count));
  KILN_RETURN_IF_ERROR(sym("nvmlDeviceGetHandleByIndex_v2", &api->handle_by_index));
  KILN_RETURN_IF_ERROR(sym("nvmlDeviceGetUtilizationRates", &api->utilization));
  KILN_RETURN_IF_ERROR(sym("nvmlDeviceGetMemoryInfo", &api->memory));
  if (nvmlReturn_t rc = api->init(); rc != kNvmlSuccess) {
    return unavailable(std::string("NVML: nvmlInit failed: ") + api->error_string(rc));
  }
  unsigned int count = 0;
  if (nvmlReturn_t rc = api->device_count(&count); rc != kNvmlSuccess) {
    return unavailable(std::string("NVML: nvmlDeviceGetCount failed: ") + api->error_string(rc));
  }
  std::vector<int> wanted = visible_devices();
  if (wanted.empty()) {
    for (unsigned int i = 0; i < count; ++i) wanted.push_back(static_cast<int>(i));
  }
  std::unique_ptr<Nvml> nvml(new Nvml());
  for (int idx : wanted) {
    nvmlDevice_t h = nullptr;
    if (idx >= static_cast<int>(count) ||
        api->handle_by_index(static_cast<unsigned int>(idx), &h) != kNvmlSuccess) {
      continue;
    }
    nvml->devices_.push_back(idx);
    nvml->handles_.push_back(h);
  }
  if (nvml->devices_.empty()) {
    return unavailable("NVML: no usable device (" + std::to_string(count) + " reported)");
  }
  nvml->api_ = std::move(api);
  return nvml.release();  // lives for the process (see load())
}

std::vector<GpuSample> Nvml::sample() const {
  std::vector<GpuSample> out;
  for (size_t i = 0; i < devices_.size(); ++i) {
    nvmlUtilization_t u{};
    nvmlMemory_t m{};
    if (api_->utilization(handles_[i], &u) != kNvmlSuccess ||
        api_->memory(handles_[i], &m) != kNvmlSuccess) {
      continue;
    }
    out.push_back(
        {devices_[i], u.gpu / 100.0, static_cast<double>(m.used), static_cast<double>(m.total)});
  }
  return out;
}

}  // namespace kiln::diag
