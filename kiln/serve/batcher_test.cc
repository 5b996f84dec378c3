#include "kiln/serve/batcher.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <mutex>

namespace kiln::serve {
namespace {

// A batch function that records batch sizes and, while closed, holds the
// worker inside a batch (so the test controls what is queued).
struct GatedDoubler {
  std::mutex mu;
  std::condition_variable cv;
  bool open = true;
  int entered = 0;
  std::vector<std::size_t> sizes;

  std::vector<Result<int>> run(std::vector<int>& in) {
    std::unique_lock<std::mutex> lock(mu);
    ++entered;
    cv.notify_all();
    sizes.push_back(in.size());
    cv.wait(lock, [&] { return open; });
    std::vector<Result<int>> out;
    for (int v : in) out.emplace_back(v * 2);
    return out;
  }
  void close() {
    std::lock_guard<std::mutex> lock(mu);
    open = false;
  }
  void release() {
    std::lock_guard<std::mutex> lock(mu);
    open = true;
    cv.notify_all();
  }
  void wait_entered(int n) {
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return entered >= n; }));
  }
};

using Batcher = DynamicBatcher<int, int>;

Batcher::BatchFn fn(GatedDoubler& g) {
  return [&g](std::vector<int>& in) { return g.run(in); };
}

TEST(DynamicBatcher, FullBatchRunsWithoutWaitingForTheDelay) {
  GatedDoubler g;
  // A 60 s delay: only a full batch can run before the test times out.
  Batcher b({.max_batch = 4, .max_queue_delay = std::chrono::seconds(60), .max_queue = 100}, fn(g));
  std::vector<std::future<Result<int>>> futures;
  for (int i = 0; i < 4; ++i) futures.push_back(std::move(b.submit(10 + i)).value());
  for (int i = 0; i < 4; ++i) {
    ASSERT_EQ(futures[i].wait_for(std::chrono::seconds(10)), std::future_status::ready) << i;
    EXPECT_EQ(*futures[i].get(), 2 * (10 + i));
  }
  EXPECT_EQ(g.sizes, std::vector<std::size_t>{4});
}

TEST(DynamicBatcher, PartialBatchRunsAfterTheQueueDelay) {
  GatedDoubler g;
  Batcher b({.max_batch = 8, .max_queue_delay = std::chrono::milliseconds(20), .max_queue = 100},
            fn(g));
  auto f = std::move(b.submit(21)).value();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(*f.get(), 42);
  EXPECT_EQ(g.sizes, std::vector<std::size_t>{1});
}

TEST(DynamicBatcher, RefusesBeyondTheQueueBoundAndAnswersTheRest) {
  GatedDoubler g;
  g.close();
  Batcher b({.max_batch = 1, .max_queue_delay = std::chrono::microseconds(0), .max_queue = 2},
            fn(g));
  auto running = std::move(b.submit(1)).value();
  g.wait_entered(1);  // the worker holds request 1; the queue is empty
  auto q1 = b.submit(2);
  auto q2 = b.submit(3);
  ASSERT_TRUE(q1.is_ok());
  ASSERT_TRUE(q2.is_ok());
  EXPECT_EQ(b.queue_length(), 2u);
  EXPECT_EQ(b.running(), 1u);
  auto refused = b.submit(4);
  ASSERT_FALSE(refused.is_ok());
  EXPECT_EQ(refused.status().code(), Code::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("max_queue 2"), std::string::npos)
      << refused.status().to_string();
  g.release();
  EXPECT_EQ(*running.get(), 2);
  EXPECT_EQ(*q1->get(), 4);
  EXPECT_EQ(*q2->get(), 6);
}

TEST(DynamicBatcher, DrainAnswersEveryQueuedRequestThenRefuses) {
  GatedDoubler g;
  g.close();
  Batcher b({.max_batch = 2, .max_queue_delay = std::chrono::seconds(60), .max_queue = 100}, fn(g));
  std::vector<std::future<Result<int>>> futures;
  futures.push_back(std::move(b.submit(0)).value());
  futures.push_back(std::move(b.submit(1)).value());
  g.wait_entered(1);
  for (int i = 2; i < 9; ++i) futures.push_back(std::move(b.submit(i)).value());
  std::thread drainer([&] { b.drain(); });
  g.release();
  drainer.join();
  for (int i = 0; i < 9; ++i) {
    ASSERT_EQ(futures[i].wait_for(std::chrono::seconds(0)), std::future_status::ready) << i;
    EXPECT_EQ(*futures[i].get(), 2 * i);
  }
  auto late = b.submit(100);
  ASSERT_FALSE(late.is_ok());
  EXPECT_EQ(late.status().code(), Code::kFailedPrecondition);
}

TEST(DynamicBatcher, AShortAnswerFromTheModelIsAnErrorNotAHang) {
  Batcher b({.max_batch = 4, .max_queue_delay = std::chrono::milliseconds(1), .max_queue = 10},
            [](std::vector<int>&) { return std::vector<Result<int>>{}; });
  auto f = std::move(b.submit(1)).value();
  ASSERT_EQ(f.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  Result<int> r = f.get();
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), Code::kInternal);
}

// Records what the worker reports per batch (read after drain(), which
// joins the worker).
struct RecordingObserver : BatchObserver {
  std::vector<BatchRun> runs;
  void on_batch(const BatchRun& run) override { runs.push_back(run); }
};

TEST(DynamicBatcher, ReportsEachBatchsSizeWhetherItWasFullAndItsQueueWait) {
  GatedDoubler g;
  g.close();
  RecordingObserver seen;
  Batcher b({.max_batch = 2, .max_queue_delay = std::chrono::milliseconds(20), .max_queue = 100},
            fn(g), &seen);
  auto first = std::move(b.submit(1)).value();
  g.wait_entered(1);  // a batch of one, closed by the delay; the worker held in it
  auto second = std::move(b.submit(2)).value();
  auto third = std::move(b.submit(3)).value();
  const auto queued_at = Clock::now();  // after both: each waits at least from here
  const double waited_at_least = seconds_since(queued_at);
  g.release();
  EXPECT_EQ(*third.get(), 6);
  b.drain();
  ASSERT_EQ(seen.runs.size(), 2u);
  EXPECT_EQ(seen.runs[0].size, 1u);
  EXPECT_FALSE(seen.runs[0].full);
  EXPECT_EQ(seen.runs[1].size, 2u);
  EXPECT_TRUE(seen.runs[1].full);
  // Both of the second batch's requests waited while the first one ran.
  EXPECT_GE(seen.runs[1].queue_wait_sum_s, 2 * waited_at_least);
  EXPECT_GE(seen.runs[0].run_seconds, 0.0);
}

TEST(DynamicBatcher, TheWorkerIsNamedAndRunsOnTheCpusItIsGiven) {
  const std::vector<int> allowed = allowed_cpus();
  ASSERT_FALSE(allowed.empty());
  std::string name;
  std::vector<int> cpus;
  Batcher b({.max_batch = 1,
             .max_queue_delay = std::chrono::microseconds(0),
             .max_queue = 10,
             .worker_cpus = {allowed.back()}},
            [&](std::vector<int>& in) {
              char buf[16] = {};
              pthread_getname_np(pthread_self(), buf, sizeof buf);
              name = buf;
              cpus = allowed_cpus();  // the calling thread's mask
              return std::vector<Result<int>>(in.size(), Result<int>(0));
            });
  ASSERT_TRUE(std::move(b.submit(1)).value().get().is_ok());
  b.drain();
  EXPECT_EQ(name, "kiln-batch");
  EXPECT_EQ(cpus, std::vector<int>{allowed.back()});
}

}  // namespace
}  // namespace kiln::serve
