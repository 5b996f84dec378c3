#include "kiln/parallel/counting_allocator.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/Exception.h>

#include <fmt/format.h>

#include <cstring>

namespace kiln::parallel {
namespace {

// Each block carries its size in a header in front of the data, so the
// pointer handed out is its own context: LibTorch's raw_allocate() and
// raw_deallocate() (which some kernels use for scratch) work through it.
constexpr std::size_t kHeader = 64;  // keeps the data 64-byte aligned, as c10's allocator does

CountingAllocator* the_counter = nullptr;

void free_block(void* data) {
  if (data == nullptr) return;
  auto* base = static_cast<char*>(data) - kHeader;
  std::size_t bytes;
  std::memcpy(&bytes, base, sizeof bytes);
  the_counter->release(bytes);
  c10::free_cpu(base);
}

class Wrapper final : public c10::Allocator {
 public:
  c10::DataPtr allocate(std::size_t n) const override {
    if (!the_counter->reserve(n)) {
      TORCH_CHECK(false, fmt::format("out of memory: allocating {} bytes would exceed the per-rank "
                                     "cap of {} bytes ({} in use)", n, the_counter->cap(),
                                     the_counter->live_bytes()));
    }
    auto* base = static_cast<char*>(c10::alloc_cpu(n + kHeader));
    std::memcpy(base, &n, sizeof n);
    void* data = base + kHeader;
    return {data, data, &free_block, c10::Device(c10::DeviceType::CPU)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &free_block; }
};

}  // namespace

bool CountingAllocator::reserve(std::size_t n) {
  const std::size_t cap = cap_.load(std::memory_order_relaxed);
  const std::size_t now = live_.fetch_add(n, std::memory_order_relaxed) + n;
  if (cap != 0 && now > cap) {
    live_.fetch_sub(n, std::memory_order_relaxed);
    return false;
  }
  std::size_t peak = peak_.load(std::memory_order_relaxed);
  while (now > peak && !peak_.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
  return true;
}

CountingAllocator& CountingAllocator::install() {
  static CountingAllocator* counter = [] {
    the_counter = new CountingAllocator();
    static Wrapper wrapper;
    c10::SetCPUAllocator(&wrapper, /*priority=*/100);
    return the_counter;
  }();
  return *counter;
}

}  // namespace kiln::parallel
