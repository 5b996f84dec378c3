#include "kiln/elastic/liveness.h"

#include <gtest/gtest.h>

#include "kiln/store/memory_store.h"

namespace kiln::elastic {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

TEST(LivenessMonitor, ANodeIsLostOnlyWhenItsCounterStoodStillForTheTtl) {
  auto store = std::make_shared<store::MemoryStore>();
  LivenessMonitor monitor(store, seconds(10));
  auto t0 = Clock::now();
  monitor.watch({"a", "b"});
  ASSERT_TRUE(store->add(heartbeat_key("a"), 1).is_ok());
  ASSERT_TRUE(store->add(heartbeat_key("b"), 1).is_ok());
  EXPECT_TRUE(monitor.lost(t0 + seconds(1))->empty());
  ASSERT_TRUE(store->add(heartbeat_key("a"), 1).is_ok());
  EXPECT_TRUE(monitor.lost(t0 + seconds(9))->empty());  // b last moved at t0+1s
  ASSERT_TRUE(store->add(heartbeat_key("a"), 1).is_ok());
  auto lost = monitor.lost(t0 + seconds(12));
  ASSERT_TRUE(lost.is_ok());
  EXPECT_EQ(*lost, std::vector<std::string>{"b"});
}

TEST(LivenessMonitor, ANodeThatNeverBeatIsLostAfterTheTtl) {
  auto store = std::make_shared<store::MemoryStore>();
  LivenessMonitor monitor(store, seconds(5));
  auto t0 = Clock::now();
  monitor.watch({"never"});
  EXPECT_TRUE(monitor.lost(t0 + seconds(4))->empty());
  EXPECT_EQ(*monitor.lost(t0 + seconds(6)), std::vector<std::string>{"never"});
}

TEST(HeartbeatPublisher, KeepsTheCounterMovingAndRecordsSuccess) {
  auto store = std::make_shared<store::MemoryStore>();
  auto before = Clock::now();
  HeartbeatPublisher publisher(store, "a", milliseconds(5));
  Deadline deadline = Deadline::after(seconds(10));
  std::int64_t beats = 0;
  while (beats < 3 && !deadline.expired()) {
    beats = *store->add(heartbeat_key("a"), 0);
    std::this_thread::yield();
  }
  EXPECT_GE(beats, 3);
  EXPECT_GE(publisher.last_success(), before);
  EXPECT_TRUE(publisher.last_error().is_ok());
}

}  // namespace
}  // namespace kiln::elastic

namespace kiln::elastic {
namespace {

TEST(LivenessMonitor, AllAliveSinceNeedsEveryCounterToMoveAfterThatTime) {
  auto store = std::make_shared<store::MemoryStore>();
  LivenessMonitor monitor(store, std::chrono::seconds(10));
  auto t0 = Clock::now();
  monitor.watch({"a", "b"});
  auto failure = t0 + std::chrono::seconds(1);
  ASSERT_TRUE(store->add(heartbeat_key("a"), 1).is_ok());
  ASSERT_TRUE(monitor.lost(failure + std::chrono::seconds(1)).is_ok());
  EXPECT_FALSE(monitor.all_alive_since(failure)) << "b has not beaten since";
  ASSERT_TRUE(store->add(heartbeat_key("b"), 1).is_ok());
  ASSERT_TRUE(monitor.lost(failure + std::chrono::seconds(2)).is_ok());
  EXPECT_TRUE(monitor.all_alive_since(failure));
}

}  // namespace
}  // namespace kiln::elastic
