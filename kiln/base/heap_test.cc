#include "kiln/base/heap.h"

#include <cstdlib>
#include <cstring>

#include <gtest/gtest.h>

#include "kiln/base/resource_usage.h"

namespace kiln {
namespace {

// A 4 MiB buffer, written, freed and allocated again: with the policy the
// second one reuses the heap's pages instead of faulting in 1024 fresh ones.
TEST(Heap, AFreedLargeBufferIsReusedWithoutPageFaults) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer's allocator replaces glibc's malloc";
#endif
  keep_freed_heap_memory();
  constexpr std::size_t kBytes = 4 << 20;
  auto touch = [] {
    void* p = std::malloc(kBytes);
    ASSERT_NE(p, nullptr);
    std::memset(p, 1, kBytes);
    std::free(p);
  };
  touch();
  const long before = ResourceUsage::of_process().minor_faults;
  touch();
  EXPECT_LT(ResourceUsage::of_process().minor_faults - before, 64) << "4 MiB came from fresh pages (1024 faults when mmapped)";
}

}  // namespace
}  // namespace kiln
