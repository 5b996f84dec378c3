// ShardCache: verified downloads, LRU eviction that spares leased shards,
// one fetch per shard under concurrency, clear errors when out of room.
#include "kiln/data/shard_cache.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "kiln/data/checksum.h"
#include "kiln/data/shard.h"
#include "kiln/data/testing/test_dataset.h"

namespace kiln::data {
namespace {

using testing::FaultyStore;
using testing::ScratchDir;

struct Fixture {
  Fixture(std::uint64_t n = 400, std::uint64_t shard_bytes = 4096) {
    index = testing::write_test_dataset(remote_dir.path() + "/ds", n, shard_bytes);
    auto s = objstore::open_object_store("file://" + remote_dir.path());
    store = std::make_unique<FaultyStore>(std::move(s).value());
  }
  ShardCache cache(std::uint64_t capacity) {
    return ShardCache(store.get(), "ds",
                      {.dir = cache_dir.path() + "/c", .capacity_bytes = capacity});
  }
  ScratchDir remote_dir, cache_dir;
  DatasetIndex index;
  std::unique_ptr<FaultyStore> store;
};

Deadline soon() { return Deadline::after_seconds(10); }

TEST(ShardCache, DownloadsOnceThenHits) {
  Fixture f;
  ShardCache c = f.cache(1 << 30);
  const ShardInfo& sh = f.index.shards[2];
  {
    auto lease = c.acquire(sh, soon());
    ASSERT_TRUE(lease.is_ok()) << lease.status().to_string();
    auto d = hash_file(lease->path());
    ASSERT_TRUE(d.is_ok());
    EXPECT_EQ(d->xxh3, sh.xxh3);
  }
  ASSERT_TRUE(c.acquire(sh, soon()).is_ok());
  EXPECT_EQ(c.stats().downloads.load(), 1u);
  EXPECT_EQ(c.stats().hits.load(), 1u);
  EXPECT_EQ(f.store->gets.load(), 1);
}

TEST(ShardCache, ConcurrentReadersFetchEachShardOnce) {
  Fixture f;
  ShardCache c = f.cache(1 << 30);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (const auto& sh : f.index.shards) {
        if (!c.acquire(sh, soon()).is_ok()) failures.fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(f.store->gets.load(), static_cast<int>(f.index.shards.size()));
}

TEST(ShardCache, EvictsLeastRecentlyUsedButNeverALeasedShard) {
  Fixture f;
  const auto& s = f.index.shards;
  ASSERT_GE(s.size(), 4u);
  std::uint64_t cap = s[0].bytes + s[1].bytes + s[2].bytes / 2;  // room for about two
  ShardCache c = f.cache(cap);
  auto held = c.acquire(s[0], soon());
  ASSERT_TRUE(held.is_ok());
  ASSERT_TRUE(c.acquire(s[1], soon()).is_ok());
  ASSERT_TRUE(c.acquire(s[2], soon()).is_ok());  // evicts s[1], not the leased s[0]
  EXPECT_TRUE(std::filesystem::exists(held->path()));
  EXPECT_EQ(c.stats().evictions.load(), 1u);
  auto used = c.used_bytes();
  ASSERT_TRUE(used.is_ok());
  EXPECT_LE(*used, cap);
  // With s[0] and s[2] both leased there is no room for s[3].
  auto held2 = c.acquire(s[2], soon());
  ASSERT_TRUE(held2.is_ok());
  auto full = c.acquire(s[3], soon());
  ASSERT_FALSE(full.is_ok());
  EXPECT_EQ(full.status().code(), Code::kResourceExhausted) << full.status().to_string();
  EXPECT_NE(full.status().message().find(s[3].file), std::string::npos);
  held = ShardLease();  // releasing s[0] makes it evictable
  EXPECT_TRUE(c.acquire(s[3], soon()).is_ok());
}

// Note [Warm shard mappings]: a parked mapping holds no lease, so eviction
// takes its shard, and this cache drops the mapping of what it evicts (its
// blocks are freed only once unmapped). Parking is bounded by bytes.
TEST(ShardCache, EvictionDropsParkedMappingsAndParkingIsBounded) {
  Fixture f;
  const auto& s = f.index.shards;
  ASSERT_GE(s.size(), 3u);
  ShardCache c(f.store.get(), "ds",
               {.dir = f.cache_dir.path() + "/c",
                .capacity_bytes = s[0].bytes + s[1].bytes + s[2].bytes / 2,  // about two
                .keep_mapped_bytes = s[0].bytes + s[1].bytes});
  auto park = [&](const ShardInfo& sh) {
    auto lease = c.acquire(sh, soon());
    ASSERT_TRUE(lease.is_ok()) << lease.status().to_string();
    auto r = ShardReader::open(lease->path(), VerifyPolicy::kOncePerFile);
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
    c.mappings().put(std::make_unique<ShardReader>(std::move(r).value()));
  };
  park(s[0]);
  park(s[1]);
  EXPECT_EQ(c.mappings().parked(), 2u);
  ASSERT_TRUE(c.acquire(s[2], soon()).is_ok());  // evicts s[0] (least recently used), parked
  EXPECT_EQ(c.stats().evictions.load(), 1u);
  EXPECT_EQ(c.mappings().parked(), 1u);
  EXPECT_EQ(c.mappings().stats().dropped.load(), 1u);
  {
    auto lease = c.acquire(s[1], soon());
    ASSERT_TRUE(lease.is_ok());
    auto kept = c.mappings().take(lease->path(), VerifyPolicy::kOncePerFile);
    ASSERT_NE(kept, nullptr);  // s[1] stayed: its mapping is reused
    EXPECT_EQ(kept->records(), s[1].num_samples);
    c.mappings().put(std::move(kept));
  }
  // Over keep_mapped_bytes: the oldest parked mapping goes.
  park(s[2]);
  park(s[0]);  // fetched again (evicting), parked last
  EXPECT_LE(c.mappings().parked_bytes(), s[0].bytes + s[1].bytes);
  EXPECT_LT(c.mappings().parked(), 3u);
}

TEST(ShardCache, ShardLargerThanCapacityIsAClearError) {
  Fixture f;
  ShardCache c = f.cache(10);
  auto r = c.acquire(f.index.shards[0], soon());
  EXPECT_EQ(r.status().code(), Code::kResourceExhausted);
  EXPECT_NE(r.status().message().find("capacity"), std::string::npos);
}

TEST(ShardCache, ChecksumMismatchIsFetchedAgainOnce) {
  Fixture f;
  ShardCache c = f.cache(1 << 30);
  f.store->corrupt_gets = 1;
  auto lease = c.acquire(f.index.shards[0], soon());
  ASSERT_TRUE(lease.is_ok()) << lease.status().to_string();
  EXPECT_EQ(f.store->gets.load(), 2);
  auto d = hash_file(lease->path());
  EXPECT_EQ(d->xxh3, f.index.shards[0].xxh3);
}

TEST(ShardCache, PersistentMismatchIsDataLossNamingBothChecksums) {
  Fixture f;
  ShardCache c = f.cache(1 << 30);
  f.store->corrupt_gets = 100;
  const ShardInfo& sh = f.index.shards[1];
  auto r = c.acquire(sh, soon());
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), Code::kDataLoss);
  const std::string& m = r.status().message();
  EXPECT_NE(m.find(sh.file), std::string::npos) << m;
  EXPECT_NE(m.find(checksum_hex(sh.xxh3)), std::string::npos) << m;
  EXPECT_EQ(f.store->gets.load(), 2);
  // Nothing unverified stays behind.
  EXPECT_EQ(c.used_bytes().value(), 0u);
}

TEST(ShardCache, MissingRemoteShardIsNotFound) {
  Fixture f;
  ShardCache c = f.cache(1 << 30);
  ShardInfo ghost = f.index.shards[0];
  ghost.file = "shard-99999.kds";
  auto r = c.acquire(ghost, soon());
  EXPECT_EQ(r.status().code(), Code::kNotFound) << r.status().to_string();
  EXPECT_NE(r.status().message().find("shard-99999.kds"), std::string::npos);
}

}  // namespace
}  // namespace kiln::data
