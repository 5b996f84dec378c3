// An LD_PRELOAD library standing for another madvise interposer (a memory
// profiler, a leak checker): it counts the calls that reach it and passes
// them on to the next madvise. Kiln's madvise must pass its calls on to it
// rather than to the kernel (Note [Kiln's madvise]); see
// MadviseHook.PassesCallsOnToTheNextMadvise.
#include <dlfcn.h>

#include <atomic>
#include <cstddef>

namespace {
std::atomic<long> g_calls{0};
}  // namespace

extern "C" {

__attribute__((visibility("default"))) int madvise(void* addr, std::size_t len,
                                                   int advice) noexcept {
  using Madvise = int (*)(void*, std::size_t, int);
  static const auto next = reinterpret_cast<Madvise>(dlsym(RTLD_NEXT, "madvise"));
  g_calls.fetch_add(1, std::memory_order_relaxed);
  return next(addr, len, advice);
}

__attribute__((visibility("default"))) long kiln_test_madvise_counter_calls() {
  return g_calls.load(std::memory_order_relaxed);
}

}  // extern "C"
