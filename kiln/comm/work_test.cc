#include "kiln/comm/work.h"

#include <gtest/gtest.h>

#include <atomic>
#include <memory>

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

}  // namespace
}  // namespace kiln::comm
