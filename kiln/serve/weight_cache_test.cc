// The weight cache against a file:// "object store" holding real committed
// checkpoints, with faults injected into the cache and into the remote.
#include "kiln/serve/weight_cache.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/load.h"
#include "kiln/ckpt/remote.h"
#include "kiln/ckpt/testing/test_state.h"
#include "kiln/serve/step_weights.h"

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

std::string first_shard(const std::string& step_dir) {
  for (const auto& e : fs::directory_iterator(step_dir)) {
    if (e.path().filename().string().rfind("shard-", 0) == 0) return e.path().string();
  }
  return "";
}

Result<StampCheck> check(const std::string& step_dir) { return check_verified_stamp(step_dir); }

// Note [Verified stamp]: a hit whose files are as downloaded is not read
// again; one byte flipped after caching is DataLoss naming the file, and the
// cache then downloads the step again, intact.
TEST(WeightCache, AHitTrustsTheStampAndAFlippedByteIsCaughtNamingTheFile) {
  TempDir remote, cache_dir;
  save_step(remote.path(), 5);
  auto store = open(remote.path());
  WeightCache cache(store.get(), {.dir = cache_dir.path()});
  auto lease = cache.acquire_latest(Deadline::after_seconds(20));
  ASSERT_TRUE(lease.is_ok()) << lease.status().to_string();
  EXPECT_TRUE(fs::exists(lease->step_dir + "/" + kVerifiedStampName));
  auto ok = check(lease->step_dir);
  ASSERT_TRUE(ok.is_ok()) << ok.status().to_string();
  EXPECT_EQ(*ok, StampCheck::kMatched);

  const std::string shard = first_shard(lease->step_dir);
  corrupt_shard(lease->step_dir);
  auto bad = check(lease->step_dir);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), Code::kDataLoss);
  EXPECT_NE(bad.status().message().find(shard), std::string::npos) << bad.status().to_string();
  EXPECT_NE(bad.status().message().find("changed since they were verified"), std::string::npos);

  ASSERT_TRUE(cache.discard(std::move(lease).value(), Deadline::after_seconds(20)).is_ok());
  auto again = cache.acquire_latest(Deadline::after_seconds(20));
  ASSERT_TRUE(again.is_ok()) << again.status().to_string();
  EXPECT_FALSE(again->hit);
  auto fresh = check(again->step_dir);
  ASSERT_TRUE(fresh.is_ok()) << fresh.status().to_string();
  EXPECT_EQ(*fresh, StampCheck::kMatched);
}

// Note [Building the model while the weights come]: the step's manifest is
// handed over before the download (nothing of the step is in the cache
// yet), and again on a hit, once per acquire; it is the manifest of the
// step the lease then holds.
TEST(WeightCache, TheManifestIsNamedBeforeTheStepIsDownloaded) {
  TempDir remote, cache_dir;
  save_step(remote.path(), 3);
  save_step(remote.path(), 7);
  auto store = open(remote.path());
  WeightCache cache(store.get(), {.dir = cache_dir.path()});
  std::vector<std::int64_t> named;
  std::string manifest;
  auto on_manifest = [&](std::int64_t step, const std::string& text) {
    named.push_back(step);
    manifest = text;
    // Nothing downloaded yet: no step directory, no partial one.
    EXPECT_TRUE(fs::is_empty(cache_dir.path()) ||
                std::none_of(fs::directory_iterator(cache_dir.path()), fs::directory_iterator(),
                             [](const fs::directory_entry& e) { return e.is_directory(); }));
  };
  auto cold = cache.acquire_latest(Deadline::after_seconds(20), on_manifest);
  ASSERT_TRUE(cold.is_ok()) << cold.status().to_string();
  EXPECT_FALSE(cold->hit);
  ASSERT_EQ(named, std::vector<std::int64_t>{7});
  std::ifstream f(cold->step_dir + "/manifest.json");
  EXPECT_EQ(manifest, std::string((std::istreambuf_iterator<char>(f)), {}));
  cold = Result<WeightLease>(unavailable("released"));
  named.clear();
  auto hit =
      WeightCache(store.get(), {.dir = cache_dir.path()})
          .acquire_latest(Deadline::after_seconds(20),
                          [&](std::int64_t step, const std::string&) { named.push_back(step); });
  ASSERT_TRUE(hit.is_ok()) << hit.status().to_string();
  EXPECT_TRUE(hit->hit);
  EXPECT_EQ(named, std::vector<std::int64_t>{7});
}

// A flipped byte whose writer puts the file's mtime back is still caught:
// the write moved ctime, which no caller can set.
TEST(WeightCache, AFlippedByteWithItsMtimePutBackIsStillCaught) {
  TempDir remote, cache_dir;
  save_step(remote.path(), 5);
  auto store = open(remote.path());
  WeightCache cache(store.get(), {.dir = cache_dir.path()});
  auto lease = cache.acquire_latest(Deadline::after_seconds(20));
  ASSERT_TRUE(lease.is_ok()) << lease.status().to_string();
  const std::string shard = first_shard(lease->step_dir);
  struct stat before {};
  ASSERT_EQ(::stat(shard.c_str(), &before), 0);
  corrupt_shard(lease->step_dir);
  const struct timespec times[2] = {before.st_atim, before.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, shard.c_str(), times, 0), 0);
  struct stat after {};
  ASSERT_EQ(::stat(shard.c_str(), &after), 0);
  ASSERT_EQ(after.st_size, before.st_size);
  ASSERT_EQ(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec);
  auto bad = check(lease->step_dir);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), Code::kDataLoss);
  EXPECT_NE(bad.status().message().find(shard), std::string::npos) << bad.status().to_string();
}

// A file touched but not changed hashes as stamped: re-stamped, served.
// A step cached without a stamp is verified entry by entry once, then stamped.
TEST(WeightCache, ATouchedFileIsRehashedAndAnUnstampedStepVerifiedOnce) {
  TempDir remote, cache_dir;
  save_step(remote.path(), 5);
  auto store = open(remote.path());
  WeightCache cache(store.get(), {.dir = cache_dir.path()});
  auto lease = cache.acquire_latest(Deadline::after_seconds(20));
  ASSERT_TRUE(lease.is_ok()) << lease.status().to_string();
  const std::string shard = first_shard(lease->step_dir);
  const struct timespec now[2] = {{0, UTIME_NOW}, {0, UTIME_NOW}};
  ASSERT_EQ(::utimensat(AT_FDCWD, shard.c_str(), now, 0), 0);
  auto touched = check(lease->step_dir);
  ASSERT_TRUE(touched.is_ok()) << touched.status().to_string();
  EXPECT_EQ(*touched, StampCheck::kRehashed);
  auto restamped = check(lease->step_dir);
  ASSERT_TRUE(restamped.is_ok());
  EXPECT_EQ(*restamped, StampCheck::kMatched);

  fs::remove(lease->step_dir + "/" + kVerifiedStampName);
  auto verified = check(lease->step_dir);
  ASSERT_TRUE(verified.is_ok()) << verified.status().to_string();
  EXPECT_EQ(*verified, StampCheck::kVerified);
  EXPECT_EQ(*check(lease->step_dir), StampCheck::kMatched);

  fs::remove(lease->step_dir + "/" + kVerifiedStampName);
  corrupt_shard(lease->step_dir);
  auto bad = check(lease->step_dir);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), Code::kDataLoss);
  EXPECT_NE(bad.status().message().find(shard), std::string::npos) << bad.status().to_string();
}

// Note [One copy]: the mapped views hold exactly the bytes ckpt::load_step
// reads, for the entries kept and no others.
TEST(WeightCache, MappedViewsHoldTheBytesLoadStepReads) {
  TempDir remote, cache_dir;
  save_step(remote.path(), 5);
  auto store = open(remote.path());
  WeightCache cache(store.get(), {.dir = cache_dir.path()});
  auto lease = cache.acquire_latest(Deadline::after_seconds(20));
  ASSERT_TRUE(lease.is_ok()) << lease.status().to_string();
  auto loaded = ckpt::load_step(lease->step_dir, 0, 1);
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  int tensors = 0;
  std::string skipped;
  for (const auto& e : loaded->entries) {
    if (e.is_tensor) skipped = e.name;
  }
  ASSERT_FALSE(skipped.empty());
  auto weights =
      StepWeights::open(lease->step_dir, [&](std::string_view name) { return name != skipped; });
  ASSERT_TRUE(weights.is_ok()) << weights.status().to_string();
  EXPECT_TRUE(weights->mapped());
  EXPECT_EQ(weights->step(), 5);
  for (const auto& e : loaded->entries) {
    const WeightTensor* w = weights->find(e.name);
    if (!e.is_tensor || e.name == skipped) {
      EXPECT_EQ(w, nullptr) << e.name;
      continue;
    }
    ASSERT_NE(w, nullptr) << e.name;
    EXPECT_EQ(w->spec.shape, e.spec.shape) << e.name;
    ASSERT_EQ(w->data.size(), e.data.size()) << e.name;
    EXPECT_TRUE(std::equal(w->data.begin(), w->data.end(), e.data.begin())) << e.name;
    ++tensors;
  }
  EXPECT_GT(tensors, 0);
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

// A checkpoint that `kiln train` saved straight to an object store holds its
// shards as chunk objects (Note [Shards as chunk objects]): the cache
// fetches them into one shard file per rank, as training's loader does.
TEST(WeightCache, AStepSavedAsChunkObjectsDownloadsAndLoads) {
  TempDir remote, cache_dir;
  {
    auto ck = ckpt::Checkpointer::create({.root = "file://" + remote.path(),
                                          .retention = {.keep_last = 10}});
    ASSERT_TRUE(ck.is_ok()) << ck.status().to_string();
    TestState s(7, 0, 1);
    Status st = (*ck)->save(s.view(), 7, Deadline::after_seconds(20));
    ASSERT_TRUE(st.is_ok()) << st.to_string();
  }
  auto store = open(remote.path());
  auto m = ckpt::read_remote_manifest(*store, 7, Deadline::after_seconds(20));
  ASSERT_TRUE(m.is_ok()) << m.status().to_string();
  ASSERT_FALSE(m->shards.at(0).chunks.empty()) << "the step was not saved as chunk objects";
  WeightCache cache(store.get(), {.dir = cache_dir.path()});
  auto got = cache.acquire_latest(Deadline::after_seconds(20));
  ASSERT_TRUE(got.is_ok()) << got.status().to_string();
  EXPECT_EQ(got->step, 7);
  auto loaded = ckpt::load_step(got->step_dir, 0, 1);
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(ckpt::testing::check_loaded(*loaded, 7, 0, 1), "");
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

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  return std::string((std::istreambuf_iterator<char>(f)), {});
}

// Sets a cached step directory's last use (its atime) to `seconds` from now.
void used_at(const std::string& step_dir, int seconds) {
  struct timespec times[2] = {{::time(nullptr) + seconds, 0}, {0, UTIME_OMIT}};
  ASSERT_EQ(::utimensat(AT_FDCWD, step_dir.c_str(), times, 0), 0) << step_dir;
}

// Note [A model built from the node cache's guess] (replica.cc): the guess
// is the manifest of the step the cache used last, whichever model it was.
TEST(WeightCache, TheGuessIsTheManifestOfTheStepUsedLastAndNoneWhenEmpty) {
  TempDir remote_a, remote_b, cache_dir;
  auto store_a = open(remote_a.path());
  WeightCache a(store_a.get(), {.dir = cache_dir.path()});
  EXPECT_FALSE(a.newest_cached_manifest().has_value());
  save_step(remote_a.path(), 5);
  save_step(remote_b.path(), 9);
  auto store_b = open(remote_b.path());
  WeightCache b(store_b.get(), {.dir = cache_dir.path()});
  auto lease_a = a.acquire_latest(Deadline::after_seconds(20));
  auto lease_b = b.acquire_latest(Deadline::after_seconds(20));
  ASSERT_TRUE(lease_a.is_ok() && lease_b.is_ok());
  const std::string manifest_a = slurp(remote_a.path() + "/step-5/manifest.json");
  const std::string manifest_b = slurp(remote_b.path() + "/step-9/manifest.json");
  ASSERT_NE(manifest_a, manifest_b);
  used_at(lease_a->step_dir, 10);
  EXPECT_EQ(b.newest_cached_manifest(), manifest_a);
  used_at(lease_b->step_dir, 20);
  EXPECT_EQ(a.newest_cached_manifest(), manifest_b);
  // A step being downloaded (no manifest yet) is no guess.
  fs::create_directories(cache_dir.path() + "/0123456789abcdef-step-11");
  used_at(cache_dir.path() + "/0123456789abcdef-step-11", 30);
  EXPECT_EQ(a.newest_cached_manifest(), manifest_b);
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
