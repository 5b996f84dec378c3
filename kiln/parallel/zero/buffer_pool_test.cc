#include "kiln/parallel/zero/buffer_pool.h"

#include <gtest/gtest.h>

#include <cstring>

#include "kiln/parallel/counting_allocator.h"

namespace kiln::parallel::zero {
namespace {

constexpr std::size_t kMiB = 1 << 20;

TEST(BufferPool, AGivenBackBlockIsTheNextOneTaken) {
  BufferPool pool(2);
  void* first;
  {
    c10::DataPtr a = pool.allocate(4 * kMiB);
    first = a.get();
    EXPECT_EQ(pool.held_bytes(), 4 * kMiB);
    EXPECT_EQ(pool.idle_bytes(), 0u);
  }
  EXPECT_EQ(pool.idle_bytes(), 4 * kMiB);
  c10::DataPtr b = pool.allocate(4 * kMiB);
  EXPECT_EQ(b.get(), first);
  EXPECT_EQ(pool.held_bytes(), 4 * kMiB);  // reused, nothing new
}

TEST(BufferPool, TakesTheSmallestIdleBlockThatIsLargeEnough) {
  BufferPool pool(3);
  void* small;
  void* large;
  {
    c10::DataPtr s = pool.allocate(1 * kMiB), l = pool.allocate(8 * kMiB);
    small = s.get();
    large = l.get();
  }
  c10::DataPtr a = pool.allocate(kMiB / 2);
  EXPECT_EQ(a.get(), small);
  c10::DataPtr b = pool.allocate(2 * kMiB);  // too large for the small one
  EXPECT_EQ(b.get(), large);
  c10::DataPtr c = pool.allocate(2 * kMiB);  // none idle: a new one
  EXPECT_NE(c.get(), large);
  EXPECT_EQ(pool.held_bytes(), 11 * kMiB);
}

TEST(BufferPool, KeepsAtMostMaxIdleBlocksTheLargest) {
  BufferPool pool(1);
  {
    c10::DataPtr a = pool.allocate(1 * kMiB), b = pool.allocate(3 * kMiB);
  }
  EXPECT_EQ(pool.idle_bytes(), 3 * kMiB);  // the smaller one was freed
  EXPECT_EQ(pool.held_bytes(), 3 * kMiB);
  pool.set_max_idle(0);
  EXPECT_EQ(pool.held_bytes(), 0u);
}

TEST(BufferPool, TensorsGiveTheirBlockBackAndBlocksMayOutliveThePool) {
  c10::DataPtr survivor;
  {
    BufferPool pool(1);
    {
      torch::Tensor t = pool.empty(1000, torch::kBFloat16);
      EXPECT_EQ(t.numel(), 1000);
      EXPECT_EQ(t.scalar_type(), torch::kBFloat16);
      t.fill_(1.5);
      EXPECT_EQ(t.to(torch::kFloat32).sum().item<float>(), 1500.0f);
      EXPECT_EQ(pool.held_bytes(), 2000u);
    }
    EXPECT_EQ(pool.idle_bytes(), 2000u);
    survivor = pool.allocate(2000);
  }
  std::memset(survivor.get(), 0, 2000);  // still valid memory
  survivor.clear();                      // freed now, no pool to return to
}

// The blocks come from the CPU allocator in use, so a memory cap counts them,
// idle ones included, and an allocation past the cap throws.
TEST(BufferPool, BlocksCountAgainstTheCountingAllocatorsCap) {
  CountingAllocator& counter = CountingAllocator::install();
  const std::size_t before = counter.live_bytes();
  {
    BufferPool pool(1);
    { c10::DataPtr a = pool.allocate(2 * kMiB); }
    EXPECT_GE(counter.live_bytes(), before + 2 * kMiB);  // idle, still held
    counter.set_cap(counter.live_bytes() + kMiB);
    EXPECT_THROW(pool.allocate(4 * kMiB), c10::Error);
    c10::DataPtr reused = pool.allocate(2 * kMiB);  // the idle block: no new memory
    EXPECT_TRUE(reused);
    counter.set_cap(0);
  }
  EXPECT_EQ(counter.live_bytes(), before);
}

}  // namespace
}  // namespace kiln::parallel::zero
