#include "kiln/base/resource_usage.h"

#include <sys/mman.h>

#include <cstddef>
#include <thread>

#include <gtest/gtest.h>

namespace kiln {
namespace {

// Writing fresh anonymous pages faults each one in, on this thread.
TEST(ResourceUsage, AThreadThatTouchesFreshPagesCountsItsFaults) {
  constexpr std::size_t kPages = 256;
  const std::size_t page = 4096;
  void* p = ::mmap(nullptr, kPages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                   -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  ::madvise(p, kPages * page, MADV_NOHUGEPAGE);  // one fault per 4 KiB page
  const ResourceUsage before = ResourceUsage::of_thread();
  for (std::size_t i = 0; i < kPages; ++i) static_cast<volatile char*>(p)[i * page] = 1;
  const ResourceUsage delta = ResourceUsage::of_thread() - before;
  ::munmap(p, kPages * page);
  EXPECT_GE(delta.minor_faults, static_cast<long>(kPages) / 2);
}

// The process's CPU time includes another thread's, the thread's does not.
TEST(ResourceUsage, ProcessCpuCountsEveryThreadThreadCpuOnlyItsOwn) {
  const ResourceUsage process0 = ResourceUsage::of_process();
  const ResourceUsage mine0 = ResourceUsage::of_thread();
  std::thread spinner([] {
    const ResourceUsage start = ResourceUsage::of_thread();
    while ((ResourceUsage::of_thread() - start).cpu_s < 0.05) {
    }
  });
  spinner.join();
  EXPECT_GE((ResourceUsage::of_process() - process0).cpu_s, 0.05);
  EXPECT_LT((ResourceUsage::of_thread() - mine0).cpu_s, 0.05);
}

}  // namespace
}  // namespace kiln
