#include "kiln/comm/work.h"

#include <gtest/gtest.h>

#include <atomic>
#include <memory>
#include <thread>

#include "kiln/comm/transport/waiting_callers.h"

namespace kiln::comm {
namespace {

TEST(Work, OnDoneRunsOnceWithTheResultWhenTheOperationFinishes) {
  Engine engine(std::chrono::seconds(5));
  auto work = std::make_shared<Work>(
      1, "op 1", [](Deadline) { return unavailable("peer 3 went away"); }, &engine);
  std::atomic<int> calls{0};
  Status seen;
  work->on_done([&](const Status& s) {
    seen = s;
    EXPECT_TRUE(work->test()) << "done before its callbacks run";
    ++calls;
  });
  EXPECT_EQ(calls.load(), 0) << "not run before the operation finishes";
  engine.submit(work);
  EXPECT_EQ(work->wait(std::chrono::seconds(5)).code(), Code::kUnavailable);
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(seen.code(), Code::kUnavailable);
  EXPECT_NE(seen.to_string().find("peer 3"), std::string::npos);
}

TEST(Work, OnDoneAfterTheOperationFinishedRunsAtOnce) {
  Engine engine(std::chrono::seconds(5));
  auto work = std::make_shared<Work>(1, "op 1", [](Deadline) { return Status::ok(); }, &engine);
  engine.submit(work);
  ASSERT_TRUE(work->wait(std::chrono::seconds(5)).is_ok());
  bool called = false;
  work->on_done([&](const Status& s) { called = s.is_ok(); });
  EXPECT_TRUE(called);
}

TEST(Work, AWaitingCallerCountsAsOneWhileItWaitsAndNotAfter) {
  // Note [A waiting caller's core is spare]: the tcp coder reads this count.
  ASSERT_EQ(transport::callers_waiting(), 0);
  Engine engine(std::chrono::seconds(5));
  std::atomic<bool> release{false};
  std::atomic<int> seen_while_running{-1};
  auto work = std::make_shared<Work>(
      1, "op 1",
      [&](Deadline d) {
        // Runs on whichever thread picked it up; the waiter below has
        // counted itself by the time the operation can see it.
        while (!release.load() && !d.expired()) {
          if (transport::callers_waiting() == 1) seen_while_running = 1;
          std::this_thread::yield();
        }
        return Status::ok();
      },
      &engine);
  engine.submit(work);
  std::thread waiter([&] { EXPECT_TRUE(work->wait(std::chrono::seconds(5)).is_ok()); });
  while (seen_while_running.load() != 1 && !work->test()) std::this_thread::yield();
  release = true;
  waiter.join();
  EXPECT_EQ(seen_while_running.load(), 1) << "the waiter was not counted while it waited";
  EXPECT_EQ(transport::callers_waiting(), 0) << "still counted after wait() returned";
  // A finished operation's wait() returns at once and counts nobody.
  EXPECT_TRUE(work->wait(std::chrono::seconds(5)).is_ok());
  EXPECT_EQ(transport::callers_waiting(), 0);
}

}  // namespace
}  // namespace kiln::comm
