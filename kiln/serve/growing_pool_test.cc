// GrowingThreadPool: threads as jobs need them, up to the cap; queued jobs
// all run; shutdown runs what is queued and joins.
#include "kiln/serve/growing_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <latch>

namespace kiln::serve {
namespace {

TEST(GrowingThreadPool, StartsSmallAndAddsAThreadPerJobThatFindsNoneFree) {
  GrowingThreadPool pool(2, 64);
  EXPECT_EQ(pool.threads(), 2u);
  // 10 jobs that each wait for all 10 to be running: they can only finish
  // if the pool grew to a thread per job.
  std::latch all_running(10);
  std::atomic<int> done{0};
  for (int i = 0; i < 10; ++i) {
    pool.enqueue([&] {
      all_running.arrive_and_wait();
      ++done;
    });
  }
  pool.shutdown();
  EXPECT_EQ(done.load(), 10);
  EXPECT_EQ(pool.threads(), 10u);
}

TEST(GrowingThreadPool, NeverExceedsItsCapAndRunsEveryQueuedJob) {
  GrowingThreadPool pool(1, 3);
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<int> running{0}, most{0}, done{0};
  for (int i = 0; i < 8; ++i) {
    pool.enqueue([&] {
      const int now = ++running;
      int seen = most.load();
      while (now > seen && !most.compare_exchange_weak(seen, now)) {
      }
      released.wait();
      --running;
      ++done;
    });
  }
  EXPECT_EQ(pool.threads(), 3u);
  release.set_value();
  pool.shutdown();
  EXPECT_EQ(done.load(), 8);
  EXPECT_LE(most.load(), 3);
}

TEST(GrowingThreadPool, IdleThreadsTakeNewJobsWithoutGrowing) {
  GrowingThreadPool pool(4, 64);
  for (int round = 0; round < 20; ++round) {
    std::promise<void> ran;
    pool.enqueue([&] { ran.set_value(); });
    ASSERT_EQ(ran.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
  }
  // One job at a time: a free thread was there each time.
  EXPECT_LE(pool.threads(), 5u);
  pool.shutdown();
}

}  // namespace
}  // namespace kiln::serve
