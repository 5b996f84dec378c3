// Single-process Checkpointer behaviour: round trip, async copy semantics,
// in-flight policies, failure reporting, retention.
#include "kiln/ckpt/checkpointer.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <future>
#include <thread>

#include "kiln/base/file.h"
#include "kiln/base/fs.h"
#include "kiln/ckpt/load.h"
#include "kiln/ckpt/testing/test_state.h"
#include "kiln/ckpt/verify.h"

namespace kiln::ckpt {
namespace {

using testing::check_loaded;
using testing::TempDir;
using testing::TestState;

std::unique_ptr<Checkpointer> make(CheckpointOptions o) {
  auto r = Checkpointer::create(std::move(o));
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
  return std::move(r).value();
}

Status save(Checkpointer& ck, std::int64_t step) {
  TestState s(step, 0, 1);
  return ck.save(s.view(), step, Deadline::after_seconds(30));
}

std::vector<std::int64_t> steps(const std::string& root) {
  auto r = list_committed_steps(root);
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
  return r.is_ok() ? *r : std::vector<std::int64_t>{};
}

TEST(Checkpointer, SavesAndLoadsBitExact) {
  for (Compression c : {Compression::kNone, Compression::kZstd}) {
    TempDir dir;
    auto ck = make({.root = dir.path(), .compression = c});
    ASSERT_TRUE(save(*ck, 10).is_ok());
    auto latest = read_file(dir.path() + "/latest");
    ASSERT_TRUE(latest.is_ok());
    EXPECT_EQ(*latest, "step-10\n");
    EXPECT_TRUE(verify_step_status(dir.path() + "/step-10").is_ok());
    auto loaded = load_latest(dir.path(), {});
    ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
    EXPECT_EQ(check_loaded(*loaded, 10, 0, 1), "");
    EXPECT_GT(ck->last_stats().bytes, 0u);
  }
}

TEST(Checkpointer, SavesWhatWasThereAtTheCall) {
  TempDir dir;
  auto ck = make({.root = dir.path()});
  TestState s(3, 0, 1);
  auto started = ck->save_async(s.view(), 3);
  ASSERT_TRUE(started.is_ok()) << started.status().to_string();
  EXPECT_EQ(*started, SaveStart::kStarted);
  // Training goes on and overwrites its tensors right away.
  std::fill(s.w0.begin(), s.w0.end(), -1.0f);
  s.rng = "changed";
  ASSERT_TRUE(ck->wait(Deadline::after_seconds(30)).is_ok());
  auto loaded = load_latest(dir.path(), {});
  ASSERT_TRUE(loaded.is_ok());
  EXPECT_EQ(check_loaded(*loaded, 3, 0, 1), "");
}

TEST(Checkpointer, ReservedStagingIsUsedAndGrowsWhenTooSmall) {
  TempDir dir;
  auto ck = make({.root = dir.path()});
  ASSERT_TRUE(ck->reserve(64).is_ok());  // smaller than the state: grown at the save
  ASSERT_TRUE(save(*ck, 1).is_ok());
  ASSERT_TRUE(ck->reserve(1 << 20).is_ok());
  ASSERT_TRUE(save(*ck, 2).is_ok());
  auto loaded = load_latest(dir.path(), {});
  ASSERT_TRUE(loaded.is_ok());
  EXPECT_EQ(check_loaded(*loaded, 2, 0, 1), "");
}

TEST(Checkpointer, TwoSavesBackToBackBothCommit) {
  TempDir dir;
  auto ck = make({.root = dir.path()});
  TestState a(1, 0, 1), b(2, 0, 1);
  ASSERT_TRUE(ck->save_async(a.view(), 1).is_ok());
  auto second = ck->save_async(b.view(), 2);  // waits for the first (kWait)
  ASSERT_TRUE(second.is_ok()) << second.status().to_string();
  EXPECT_EQ(*second, SaveStart::kStarted);
  ASSERT_TRUE(ck->wait(Deadline::after_seconds(30)).is_ok());
  EXPECT_EQ(steps(dir.path()), (std::vector<std::int64_t>{2, 1}));
  EXPECT_TRUE(verify_step_status(dir.path() + "/step-1").is_ok());
  EXPECT_TRUE(verify_step_status(dir.path() + "/step-2").is_ok());
}

TEST(Checkpointer, SkipPolicyDropsASaveWhileOneIsInFlight) {
  TempDir dir;
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  auto ck = make({.root = dir.path(),
                  .busy = BusyPolicy::kSkip,
                  .after_shard_written_for_test = [released](std::int64_t step) {
                    if (step == 1) released.wait();
                  }});
  TestState a(1, 0, 1), b(2, 0, 1);
  ASSERT_TRUE(ck->save_async(a.view(), 1).is_ok());
  auto second = ck->save_async(b.view(), 2);
  ASSERT_TRUE(second.is_ok());
  EXPECT_EQ(*second, SaveStart::kSkipped);
  EXPECT_EQ(ck->wait(Deadline::after_ms(50)).code(), Code::kDeadlineExceeded);
  release.set_value();
  ASSERT_TRUE(ck->wait(Deadline::after_seconds(30)).is_ok());
  EXPECT_EQ(steps(dir.path()), (std::vector<std::int64_t>{1}));
}

TEST(Checkpointer, BackgroundFailureSurfacesOnTheNextCall) {
  TempDir dir;
  auto ck = make({.root = dir.path()});
  // A file where the step's temp directory goes: the shard cannot be created.
  ASSERT_TRUE(write_file_synced(*Fs::posix(), dir.path() + "/step-5.tmp", "x").is_ok());
  TestState s(5, 0, 1), t(6, 0, 1);
  ASSERT_TRUE(ck->save_async(s.view(), 5).is_ok());
  auto next = ck->save_async(t.view(), 6);
  ASSERT_FALSE(next.is_ok());
  EXPECT_NE(next.status().message().find("step-5.tmp"), std::string::npos)
      << next.status().to_string();
  EXPECT_NE(next.status().message().find("step 5"), std::string::npos) << next.status().to_string();
  // Reported once; the checkpointer goes on working.
  EXPECT_TRUE(ck->wait(Deadline::after_seconds(30)).is_ok());
  EXPECT_TRUE(save(*ck, 6).is_ok());
  EXPECT_EQ(steps(dir.path()), (std::vector<std::int64_t>{6}));
}

TEST(Checkpointer, ACommittedStepIsNotOverwritten) {
  TempDir dir;
  auto ck = make({.root = dir.path()});
  ASSERT_TRUE(save(*ck, 3).is_ok());
  EXPECT_EQ(save(*ck, 3).code(), Code::kAlreadyExists);
}

TEST(Checkpointer, RetentionKeepsLastKAndEveryNth) {
  TempDir dir;
  auto ck = make({.root = dir.path(), .retention = {.keep_last = 2, .keep_every = 4}});
  for (int step = 1; step <= 9; ++step) ASSERT_TRUE(save(*ck, step).is_ok());
  EXPECT_EQ(steps(dir.path()), (std::vector<std::int64_t>{9, 8, 4}));
}

TEST(Checkpointer, RetentionSparesAStepBeingLoaded) {
  TempDir dir;
  auto ck = make({.root = dir.path(), .retention = {.keep_last = 1}});
  ASSERT_TRUE(save(*ck, 1).is_ok());
  {
    auto lock = StepReadLock::acquire(dir.path() + "/step-1");  // a slow load of step 1
    ASSERT_TRUE(lock.is_ok());
    ASSERT_TRUE(save(*ck, 2).is_ok());
    ASSERT_TRUE(save(*ck, 3).is_ok());
    EXPECT_EQ(steps(dir.path()), (std::vector<std::int64_t>{3, 1}));
    auto loaded = load_step(dir.path() + "/step-1", 0, 1);  // shared locks coexist
    ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
    EXPECT_EQ(check_loaded(*loaded, 1, 0, 1), "");
  }
  ASSERT_TRUE(save(*ck, 4).is_ok());
  EXPECT_EQ(steps(dir.path()), (std::vector<std::int64_t>{4}));
}

TEST(Checkpointer, LoadsRacingSavesAndRetentionAlwaysSucceed) {
  TempDir dir;
  auto ck = make({.root = dir.path(), .retention = {.keep_last = 1}});
  ASSERT_TRUE(save(*ck, 1).is_ok());
  std::atomic<bool> done{false};
  std::atomic<int> loads{0};
  std::string failure;
  std::thread loader([&] {
    while (!done.load()) {
      auto r = load_latest(dir.path(), {});
      if (!r.is_ok()) {
        failure = r.status().to_string();
        return;
      }
      std::string bad = check_loaded(*r, r->step, 0, 1);
      if (!bad.empty()) {
        failure = bad;
        return;
      }
      ++loads;
    }
  });
  for (int step = 2; step <= 30; ++step) ASSERT_TRUE(save(*ck, step).is_ok());
  done = true;
  loader.join();
  EXPECT_EQ(failure, "");
  EXPECT_GT(loads.load(), 0);
  // A step the loader held during the last retention is kept until the next
  // commit; with the loader gone, that commit leaves only itself.
  ASSERT_TRUE(save(*ck, 31).is_ok());
  EXPECT_EQ(steps(dir.path()), (std::vector<std::int64_t>{31}));
}

}  // namespace
}  // namespace kiln::ckpt
