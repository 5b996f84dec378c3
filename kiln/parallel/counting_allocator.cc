#include "kiln/parallel/counting_allocator.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <fmt/format.h>

namespace kiln::parallel {
namespace {

struct Allocation {
  c10::DataPtr inner;
  std::size_t bytes;
  CountingAllocator* counter;
};

void free_allocation(void* ctx) {
  auto* a = static_cast<Allocation*>(ctx);
  a->counter->release(a->bytes);
  delete a;  // frees `inner` through the wrapped allocator
}

class Wrapper final : public c10::Allocator {
 public:
  Wrapper(c10::Allocator* inner, CountingAllocator* counter) : inner_(inner), counter_(counter) {}

  c10::DataPtr allocate(std::size_t n) const override {
    if (!counter_->reserve(n)) {
      TORCH_CHECK(false, fmt::format("out of memory: allocating {} bytes would exceed the per-rank "
                                     "cap of {} bytes ({} in use)", n, counter_->cap(),
                                     counter_->live_bytes()));
    }
    c10::DataPtr inner = inner_->allocate(n);
    void* data = inner.get();
    c10::Device device = inner.device();
    return {data, new Allocation{std::move(inner), n, counter_}, &free_allocation, device};
  }

 private:
  c10::Allocator* inner_;
  CountingAllocator* counter_;
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
    auto* c = new CountingAllocator();
    static Wrapper wrapper(c10::GetCPUAllocator(), c);
    c10::SetCPUAllocator(&wrapper, /*priority=*/100);
    return c;
  }();
  return *counter;
}

}  // namespace kiln::parallel
