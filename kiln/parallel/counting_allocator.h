// CountingAllocator: LibTorch's CPU allocator with a byte counter in front,
// so a benchmark or test measures the tensor memory a process really holds
// (live and peak bytes as allocated, not RSS estimates), optionally refusing
// allocations past a cap the way a device runs out of memory.
//
// install() replaces the CPU allocator (c10's alloc_cpu underneath, as the
// default one); allocations made before it are not counted and are freed by
// the allocator that made them. Thread-safe. It stays for the process.
#pragma once

#include <atomic>
#include <cstddef>

namespace kiln::parallel {

class CountingAllocator {
 public:
  // Installs the counter (once per process; later calls return the same one).
  static CountingAllocator& install();

  std::size_t live_bytes() const { return live_.load(std::memory_order_relaxed); }
  std::size_t peak_bytes() const { return peak_.load(std::memory_order_relaxed); }
  void reset_peak() { peak_.store(live_bytes(), std::memory_order_relaxed); }
  // 0 = no cap. Past it, an allocation throws c10::Error naming the cap.
  void set_cap(std::size_t bytes) { cap_.store(bytes, std::memory_order_relaxed); }
  std::size_t cap() const { return cap_.load(std::memory_order_relaxed); }

  // Called by the allocator (internal).
  bool reserve(std::size_t n);
  void release(std::size_t n) { live_.fetch_sub(n, std::memory_order_relaxed); }

 private:
  std::atomic<std::size_t> live_{0};
  std::atomic<std::size_t> peak_{0};
  std::atomic<std::size_t> cap_{0};
};

}  // namespace kiln::parallel
