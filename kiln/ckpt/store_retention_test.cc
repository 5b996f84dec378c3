// Rank 0's retention on an object store, after the commit (Note [Retention
// after the commit], checkpointer_retention.cc): it never holds a save back,
// its failures are reported once, and shutdown does not wait for all of it.
#include <gtest/gtest.h>

#include <atomic>

#include "kiln/base/testing/temp_dir.h"
#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/remote.h"
#include "kiln/ckpt/remote_load.h"
#include "kiln/ckpt/testing/stall.h"
#include "kiln/ckpt/testing/test_state.h"
#include "kiln/objstore/testing/forwarding_object_store.h"

namespace kiln::ckpt {
namespace {

using testing::check_loaded;
using testing::LetGoAtExit;
using testing::Stall;
using testing::TempDir;
using testing::TestState;

Deadline soon() { return Deadline::after_seconds(30); }

// Deletes under step-1/ fail (the first one after stopping at `stall`),
// while `failing`.
class FailingDeletes final : public objstore::testing::ForwardingObjectStore {
 public:
  using ForwardingObjectStore::ForwardingObjectStore;
  Status remove(const std::string& key, Deadline d) override {
    if (!failing || !key.starts_with("step-1/")) return inner_.remove(key, d);
    stall.stop_first();
    return unavailable("injected: delete " + key);
  }
  std::atomic<bool> failing{true};
  Stall stall;
};

// Note [Retention after the commit]: save() returns once the manifest is
// put; rank 0 deletes older steps in the background. While that runs, the
// newest step loads; a failed delete is returned by flush_retention (not by
// a save) and the next retention removes what was left.
TEST(StoreCheckpoints, RetentionRunsAfterTheCommitAndItsFailureIsReportedNotLost) {
  TempDir remote, cache;
  const std::string url = "file://" + remote.path() + "/run";
  auto inner = objstore::open_object_store(url).value();
  FailingDeletes store(*inner);
  auto ck = Checkpointer::create({.root = url, .retention = {.keep_last = 1}, .store = &store});
  ASSERT_TRUE(ck.is_ok()) << ck.status().to_string();
  LetGoAtExit let_go{store.stall};
  for (std::int64_t step : {1, 2}) {
    TestState s(step, 0, 1);
    Status st = (*ck)->save(s.view(), step, soon());
    ASSERT_TRUE(st.is_ok()) << st.to_string();
  }
  // Step 2 is committed and retention, stuck deleting step 1, has not ended.
  ASSERT_TRUE(store.stall.reached(std::chrono::seconds(30)));
  EXPECT_EQ((*ck)->flush_retention(Deadline::after_seconds(0.05)).code(), Code::kDeadlineExceeded);
  auto loaded = load_latest_remote(*inner, cache.path() + "/a", {});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(check_loaded(*loaded, 2, 0, 1), "");

  store.stall.let_go();
  Status failed = (*ck)->flush_retention(soon());
  EXPECT_NE(failed.message().find("injected: delete step-1/"), std::string::npos)
      << failed.to_string();
  EXPECT_TRUE((*ck)->flush_retention(soon()).is_ok()) << "a failure is returned once";
  loaded = load_latest_remote(*inner, cache.path() + "/b", {});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(check_loaded(*loaded, 2, 0, 1), "");

  store.failing = false;
  TestState s3(3, 0, 1);
  ASSERT_TRUE((*ck)->save(s3.view(), 3, soon()).is_ok());
  ASSERT_TRUE((*ck)->flush_retention(soon()).is_ok());
  EXPECT_GT((*ck)->last_stats().retention_s, 0);
  EXPECT_EQ(list_remote_committed_steps(*inner, soon()).value(), (std::vector<std::int64_t>{3}));
  EXPECT_TRUE(inner->list("step-1/", soon()).value().empty()) << "step 1 was left";
  EXPECT_TRUE(inner->list("step-2/", soon()).value().empty()) << "step 2 was left";
  loaded = load_latest_remote(*inner, cache.path() + "/c", {});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(check_loaded(*loaded, 3, 0, 1), "");
}

// Every delete is counted; the first stops at `stall`.
class SlowDeletes final : public objstore::testing::ForwardingObjectStore {
 public:
  using ForwardingObjectStore::ForwardingObjectStore;
  Status remove(const std::string& key, Deadline d) override {
    stall.stop_first();
    ++removes;
    return inner_.remove(key, d);
  }
  std::atomic<int> removes{0};
  Stall stall;
};

// Note [Retention after the commit]: ~Checkpointer (an elastic restart)
// stops retention after the delete in flight instead of waiting for every
// old step's; the next commit's retention deletes the rest. Neither deletes
// the newest committed step.
TEST(StoreCheckpoints, ShutdownStopsRetentionAfterTheDeleteInFlight) {
  TempDir remote, cache;
  const std::string url = "file://" + remote.path() + "/run";
  auto inner = objstore::open_object_store(url).value();
  {
    auto ck = Checkpointer::create({.root = url, .retention = {.keep_last = 10}, .store = inner.get()});
    ASSERT_TRUE(ck.is_ok()) << ck.status().to_string();
    for (std::int64_t step = 1; step <= 4; ++step) {
      TestState s(step, 0, 1);
      ASSERT_TRUE((*ck)->save(s.view(), step, soon()).is_ok());
    }
  }
  const std::size_t step1_objects = inner->list("step-1/", soon()).value().size();
  SlowDeletes store(*inner);
  {
    // Steps 1-4 are beyond keep_last = 1 after step 5: step 1's delete stops
    // until ~Checkpointer has asked retention to stop.
    auto ck = Checkpointer::create({.root = url,
                                    .retention = {.keep_last = 1},
                                    .store = &store,
                                    .after_retention_stop_for_test = [&] { store.stall.let_go(); }});
    ASSERT_TRUE(ck.is_ok()) << ck.status().to_string();
    LetGoAtExit let_go{store.stall};
    TestState s(5, 0, 1);
    ASSERT_TRUE((*ck)->save(s.view(), 5, soon()).is_ok());
    ASSERT_TRUE(store.stall.reached(std::chrono::seconds(30)));
  }
  EXPECT_EQ(list_remote_committed_steps(*inner, soon()).value(),
            (std::vector<std::int64_t>{5, 4, 3, 2}))
      << "shutdown waited for more than the delete in flight, or cut it short";
  EXPECT_TRUE(inner->list("step-1/", soon()).value().empty()) << "step 1 was left half-deleted";
  EXPECT_EQ(store.removes.load(), static_cast<int>(step1_objects));

  auto ck = Checkpointer::create({.root = url, .retention = {.keep_last = 1}, .store = inner.get()});
  ASSERT_TRUE(ck.is_ok()) << ck.status().to_string();
  TestState s(6, 0, 1);
  ASSERT_TRUE((*ck)->save(s.view(), 6, soon()).is_ok());
  ASSERT_TRUE((*ck)->flush_retention(soon()).is_ok());
  EXPECT_EQ(list_remote_committed_steps(*inner, soon()).value(), (std::vector<std::int64_t>{6}));
  const std::vector<objstore::ObjectInfo> left = inner->list("step-", soon()).value();
  for (const auto& o : left) {
    EXPECT_TRUE(o.key.starts_with("step-6/")) << o.key << " was left";
  }
  auto loaded = load_latest_remote(*inner, cache.path(), {});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(check_loaded(*loaded, 6, 0, 1), "");
}

}  // namespace
}  // namespace kiln::ckpt
