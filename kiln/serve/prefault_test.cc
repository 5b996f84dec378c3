// prefault_heap: memory allocated after it on the same thread is written
// without a page fault per page (Note [Pre-faulted heap]). Counted with the
// thread's own fault counter, each case on a thread (an arena) of its own.
#include "kiln/serve/prefault.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <future>
#include <thread>

#include "kiln/base/heap.h"
#include "kiln/base/resource_usage.h"

namespace kiln::serve {
namespace {

constexpr std::size_t kModelBytes = 4 << 20;  // 1,024 pages

// Whether this kernel populates pages on request (Linux 5.14+), asked
// without prefault_heap.
bool kernel_populates() {
  const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  void* p = ::mmap(nullptr, page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return false;
  const bool ok = ::madvise(p, page, 23 /* MADV_POPULATE_WRITE */) == 0;
  ::munmap(p, page);
  return ok;
}

long thread_minor_faults() { return ResourceUsage::of_thread().minor_faults; }

// Minor faults of allocating and writing kModelBytes (as a model build
// does) on a new thread, after prefault_heap(prefault) there. The thread
// ends only once `done` is ready: a thread that ended hands its malloc arena,
// pages and all, to the next thread started, which would then not start cold.
long faults_writing_a_model(std::size_t prefault, std::size_t* populated,
                            std::shared_future<void> done, std::thread* t) {
  std::promise<long> faults;
  auto result = faults.get_future();
  *t = std::thread([&, done, f = std::move(faults)]() mutable {
    *populated = prefault_heap(prefault);
    const long before = thread_minor_faults();
    // volatile: a store the compiler may not drop before the free.
    auto* p = static_cast<volatile char*>(std::malloc(kModelBytes));
    for (std::size_t i = 0; i < kModelBytes; i += 512) p[i] = 1;
    f.set_value(thread_minor_faults() - before);
    std::free(const_cast<char*>(p));
    done.wait();
  });
  return result.get();
}

// Each test runs in a process of its own (gtest_discover_tests), so the two
// threads below take new arenas, not ones earlier tests warmed.
TEST(PrefaultHeap, AModelBuiltAfterItTakesItsPagesWithoutFaulting) {
  keep_freed_heap_memory();
  std::promise<void> finish;
  std::shared_future<void> done = finish.get_future().share();
  std::thread a, b;
  std::size_t populated = 0;
  const long cold = faults_writing_a_model(0, &populated, done, &a);
  EXPECT_EQ(populated, 0u);
  const long warm = faults_writing_a_model(2 * kModelBytes, &populated, done, &b);
  finish.set_value();
  a.join();
  b.join();
  if (!kernel_populates()) GTEST_SKIP() << "this kernel has no MADV_POPULATE_WRITE (Linux < 5.14)";
  EXPECT_GE(populated, 2 * kModelBytes - 8192);
  EXPECT_GT(cold, 900) << "fresh pages fault one by one";
  EXPECT_LT(warm, cold / 10) << "cold " << cold << " faults, pre-faulted " << warm;
}

TEST(PrefaultHeap, NothingAskedNothingDone) { EXPECT_EQ(prefault_heap(0), 0u); }

}  // namespace
}  // namespace kiln::serve
