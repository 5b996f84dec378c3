// The weight cache against a file:// "object store" holding real committed
// checkpoints, with faults injected into the cache and into the remote.
#include "kiln/serve/weight_cache.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/load.h"
#include "kiln/ckpt/testing/test_state.h"

namespace kiln::serve {
namespace {

namespace fs = std::filesystem;
using ckpt::testing::TempDir;
using ckpt::testing::TestState;

void save_step(const std::string& root, std::int64_t step) {
  auto ck = ckpt::Checkpointer::create({.root = root, .retention = {.keep_last = 10}});
  ASSERT_TRUE(ck.is_ok()) << ck.status().to_string();
  TestState s(step, 0, 1);
  Status st = (*ck)->save(s.view(), step, Deadline::after_seconds(20));
  ASSERT_TRUE(st.is_ok()) << st.to_string();
}

std::unique_ptr<data::ObjectStore> open(const std::string& dir) {
  auto s = data::open_object_store("file://" + dir);
  EXPECT_TRUE(s.is_ok()) << s.status().to_string();
  return std::move(s).value();
}

// Flips one byte in the middle of the first shard file under `step_dir`.
void corrupt_shard(const std::string& step_dir) {
  for (const auto& e : fs::directory_iterator(step_dir)) {
    if (e.path().filename().string().rfind("shard-", 0) != 0) continue;
    std::fstream f(e.path(), std::ios::in | std::ios::out | std::ios::binary);
    const auto at = static_cast<std::streamoff>(fs::file_size(e.path()) / 2);
    f.seekg(at);
    char c = 0;
    f.get(c);
    f.seekp(at);
    f.put(static_cast<char>(c ^ 0x5a));
    return;
  }
  FAIL() << "no shard file in " << step_dir;
}

TEST(WeightCache, FirstAcquireDownloadsLaterOnesHitAndBothLoad) {
  TempDir remote, cache_dir;
  save_step(remote.path(), 5);
  auto store = open(remote.path());
  WeightCache cache(store.get(), {.dir = cache_dir.path()});
  auto first = cache.acquire_latest(Deadline::after_seconds(20));
  ASSERT_TRUE(first.is_ok()) << first.status().to_string();
  EXPECT_FALSE(first->hit);
  EXPECT_EQ(first->step, 5);
  EXPECT_GT(first->bytes, 0u);
  auto loaded = ckpt::load_step(first->step_dir, 0, 1);
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(ckpt::testing::check_loaded(*loaded, 5, 0, 1), "");

  WeightCache other_replica(store.get(), {.dir = cache_dir.path()});
  auto second = other_replica.acquire_latest(Deadline::after_seconds(20));
  ASSERT_TRUE(second.is_ok()) << second.status().to_string();
  EXPECT_TRUE(second->hit);
  EXPECT_EQ(second->fetch_seconds, 0);
  EXPECT_EQ(second->step_dir, first->step_dir);
}

TEST(WeightCache, TheNewestCommittedStepWinsAndNoStepIsNotFound) {
  TempDir remote, cache_dir;
  auto store = open(remote.path());
  WeightCache cache(store.get(), {.dir = cache_dir.path()});
  auto none = cache.acquire_latest(Deadline::after_seconds(20));
  ASSERT_FALSE(none.is_ok());
  EXPECT_EQ(none.status().code(), Code::kNotFound);
  EXPECT_NE(none.status().message().find(remote.path()), std::string::npos);
  save_step(remote.path(), 5);
  save_step(remote.path(), 9);
  auto lease = cache.acquire_latest(Deadline::after_seconds(20));
  ASSERT_TRUE(lease.is_ok()) << lease.status().to_string();
  EXPECT_EQ(lease->step, 9);
}

TEST(WeightCache, ACorruptCachedCopyIsDiscardedAndDownloadedAgain) {
  TempDir remote, cache_dir;
  save_step(remote.path(), 5);
  auto store = open(remote.path());
  WeightCache cache(store.get(), {.dir = cache_dir.path()});
  auto lease = cache.acquire_latest(Deadline::after_seconds(20));
  ASSERT_TRUE(lease.is_ok());
  corrupt_shard(lease->step_dir);
  auto bad = ckpt::load_step(lease->step_dir, 0, 1);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), Code::kDataLoss);
  ASSERT_TRUE(cache.discard(std::move(lease).value(), Deadline::after_seconds(20)).is_ok());
  auto again = cache.acquire_latest(Deadline::after_seconds(20));
  ASSERT_TRUE(again.is_ok()) << again.status().to_string();
  EXPECT_FALSE(again->hit);
  auto loaded = ckpt::load_step(again->step_dir, 0, 1);
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(ckpt::testing::check_loaded(*loaded, 5, 0, 1), "");
}

TEST(WeightCache, ACorruptRemoteCopyIsDataLossNamingItAndLeavesNothingCached) {
  TempDir remote, cache_dir;
  save_step(remote.path(), 5);
  corrupt_shard(remote.path() + "/step-5");
  auto store = open(remote.path());
  WeightCache cache(store.get(), {.dir = cache_dir.path()});
  auto r = cache.acquire_latest(Deadline::after_seconds(20));
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), Code::kDataLoss);
  EXPECT_NE(r.status().message().find("step-5"), std::string::npos) << r.status().to_string();
  EXPECT_NE(r.status().message().find("remote copy is corrupt"), std::string::npos);
  for (const auto& e : fs::directory_iterator(cache_dir.path())) {
    EXPECT_EQ(e.path().string().find("partial"), std::string::npos) << e.path();
    EXPECT_FALSE(e.is_directory()) << e.path() << " left behind";
  }
}

TEST(WeightCache, EvictsTheLeastRecentlyUsedStepButNeverALeasedOne) {
  TempDir remote, cache_dir;
  save_step(remote.path(), 5);
  auto store = open(remote.path());
  std::uint64_t one_step;
  {
    WeightCache probe(store.get(), {.dir = cache_dir.path()});
    auto l = probe.acquire_latest(Deadline::after_seconds(20));
    ASSERT_TRUE(l.is_ok());
    one_step = l->bytes;
  }
  // Room for one step (plus slack below a second).
  WeightCache cache(store.get(), {.dir = cache_dir.path(), .capacity_bytes = one_step * 3 / 2});
  auto held = cache.acquire_latest(Deadline::after_seconds(20));
  ASSERT_TRUE(held.is_ok());
  EXPECT_TRUE(held->hit);
  save_step(remote.path(), 9);
  auto refused = cache.acquire_latest(Deadline::after_seconds(20));
  ASSERT_FALSE(refused.is_ok());
  EXPECT_EQ(refused.status().code(), Code::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("leased"), std::string::npos)
      << refused.status().to_string();
  const std::string old_dir = held->step_dir;
  held = Result<WeightLease>(not_found("released"));  // the replica finished loading
  auto fresh = cache.acquire_latest(Deadline::after_seconds(20));
  ASSERT_TRUE(fresh.is_ok()) << fresh.status().to_string();
  EXPECT_EQ(fresh->step, 9);
  EXPECT_FALSE(fs::exists(old_dir)) << "step 5 should have been evicted";
}

TEST(WeightCache, ReplicasStartingTogetherDownloadOnce) {
  TempDir remote, cache_dir;
  save_step(remote.path(), 5);
  constexpr int kReplicas = 4;
  std::vector<pid_t> children;
  for (int i = 0; i < kReplicas; ++i) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      auto store = data::open_object_store("file://" + remote.path());
      if (!store.is_ok()) ::_exit(2);
      WeightCache cache(store->get(), {.dir = cache_dir.path()});
      auto l = cache.acquire_latest(Deadline::after_seconds(30));
      if (!l.is_ok()) ::_exit(2);
      auto loaded = ckpt::load_step(l->step_dir, 0, 1);
      if (!loaded.is_ok() || !ckpt::testing::check_loaded(*loaded, 5, 0, 1).empty()) ::_exit(3);
      ::_exit(l->hit ? 0 : 1);
    }
    children.push_back(pid);
  }
  int downloads = 0, hits = 0;
  for (pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    ASSERT_LE(WEXITSTATUS(status), 1) << "a replica failed (exit " << WEXITSTATUS(status) << ")";
    (WEXITSTATUS(status) == 1 ? downloads : hits)++;
  }
  EXPECT_EQ(downloads, 1);
  EXPECT_EQ(hits, kReplicas - 1);
}

}  // namespace
}  // namespace kiln::serve
