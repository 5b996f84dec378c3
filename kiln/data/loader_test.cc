// Loader: ordered, complete, resumable batches; corruption surfaces as an error.
#include "kiln/data/loader.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <optional>
#include <thread>

#include "kiln/base/fd.h"
#include "kiln/data/dataset_writer.h"
#include "kiln/data/testing/test_dataset.h"
#include "kiln/objstore/testing/forwarding_object_store.h"

namespace kiln::data {
namespace {

using testing::ScratchDir;

struct Fixture {
  Fixture() {
    index = testing::write_test_dataset(remote.path() + "/ds", 500, 3000);
    store = std::move(objstore::open_object_store(remote.path())).value();
    cache = std::make_unique<ShardCache>(
        store.get(), "ds", ShardCacheOptions{.dir = local.path(), .capacity_bytes = 1 << 30});
  }
  ScratchDir remote, local;
  DatasetIndex index;
  std::unique_ptr<objstore::ObjectStore> store;
  std::unique_ptr<ShardCache> cache;
};

Deadline soon() { return Deadline::after_seconds(20); }

// Checks every column of `b` against the synthetic samples.
void check_batch(const Batch& b) {
  ASSERT_EQ(b.columns.size(), 3u);
  const Column& id = b.columns[0];
  const Column& payload = b.columns[1];
  const Column& vec = b.columns[2];
  std::size_t n = b.sample_ids.size();
  ASSERT_EQ(id.shape, std::vector<std::int64_t>{static_cast<std::int64_t>(n)});
  ASSERT_EQ(vec.shape, (std::vector<std::int64_t>{static_cast<std::int64_t>(n), 4}));
  ASSERT_EQ(payload.offsets.size(), n + 1);
  ASSERT_EQ(vec.data.size(), n * 16);
  for (std::size_t j = 0; j < n; ++j) {
    Sample want = testing::test_sample(b.sample_ids[j]);
    std::int64_t got_id;
    std::memcpy(&got_id, id.data.data() + 8 * j, 8);
    EXPECT_EQ(static_cast<std::uint64_t>(got_id), b.sample_ids[j]);
    std::vector<std::uint8_t> got_payload(payload.data.begin() + payload.offsets[j],
                                          payload.data.begin() + payload.offsets[j + 1]);
    EXPECT_EQ(got_payload, want[1].data);
    EXPECT_EQ(0, std::memcmp(vec.data.data() + 16 * j, want[2].data.data(), 16));
  }
}

// Drains `l` to the end of its epoch: batch numbers 0, 1, ... in order, each
// checked and passed to `per_batch`; then every sample was delivered once.
void drain_expecting_each_sample_once(Loader& l, std::uint64_t num_samples,
                                      const std::function<void(const Batch&)>& per_batch = {}) {
  std::vector<int> seen(num_samples, 0);
  for (std::uint64_t n = 0;; ++n) {
    auto b = l.next(soon());
    ASSERT_TRUE(b.is_ok()) << b.status().to_string();
    if (!b->has_value()) break;
    ASSERT_EQ((*b)->number, n);
    check_batch(**b);
    if (per_batch) {
      ASSERT_NO_FATAL_FAILURE(per_batch(**b));
    }
    for (auto id : (*b)->sample_ids) ++seen[id];
  }
  for (std::size_t i = 0; i < seen.size(); ++i) ASSERT_EQ(seen[i], 1) << "sample " << i;
}

// Runs `world` loaders in lockstep from `state` for up to `steps` steps.
SamplerState run(Fixture& f, int world, LoaderOptions base, std::uint64_t steps,
                 std::vector<int>* seen) {
  std::vector<std::unique_ptr<Loader>> ranks;
  for (int r = 0; r < world; ++r) {
    LoaderOptions o = base;
    o.rank = r;
    o.world = world;
    ranks.push_back(std::make_unique<Loader>(f.cache.get(), f.index, o));
  }
  SamplerState state = base.state;
  for (std::uint64_t s = 0; s < steps; ++s) {
    bool any = false;
    for (auto& l : ranks) {
      auto b = l->next(soon());
      EXPECT_TRUE(b.is_ok()) << b.status().to_string();
      if (!b.is_ok() || !b->has_value()) continue;
      any = true;
      EXPECT_EQ((*b)->number, s);
      check_batch(**b);
      for (auto id : (*b)->sample_ids) ++(*seen)[id];
      state = (*b)->state_after;
    }
    if (!any) break;
  }
  return state;
}

TEST(Loader, RanksTogetherSeeEverySampleOnceAndResume) {
  Fixture f;
  LoaderOptions o{.sampler = {.seed = 3, .shuffle_window = 50}, .state = {.epoch = 1},
                  .batch_size = 16, .workers = 2, .queue_depth = 3};
  std::vector<int> seen(f.index.num_samples, 0);
  SamplerState saved = run(f, 3, o, 4, &seen);
  EXPECT_EQ(saved.consumed, 4u * 16 * 3);
  o.state = saved;
  SamplerState end = run(f, 2, o, UINT64_MAX, &seen);
  EXPECT_EQ(end.consumed, f.index.num_samples);
  for (std::size_t i = 0; i < seen.size(); ++i) ASSERT_EQ(seen[i], 1) << "sample " << i;
}

// Note [Recycled batch buffers]: a dropped batch's buffers carry the next
// one; a batch still held is never written to, also after its loader is gone.
TEST(Loader, RecyclesDroppedBatchBuffersButNeverAHeldOne) {
  Fixture f;
  std::optional<Batch> held;
  std::uint64_t batches = 0;
  {
    Loader l(f.cache.get(), f.index, {.sampler = {.seed = 5, .shuffle_window = 40},
                                      .batch_size = 16, .workers = 2, .queue_depth = 3});
    for (;; ++batches) {
      auto b = l.next(soon());
      ASSERT_TRUE(b.is_ok()) << b.status().to_string();
      if (!b->has_value()) break;
      check_batch(**b);
      if (batches == 2) held = std::move(*b);  // kept across the rest of the epoch
    }
    ASSERT_EQ(batches, l.num_batches());
    EXPECT_EQ(l.batch_pool().made(), batches);
    // All but the first few batches (queue + workers + the held one) reuse buffers.
    EXPECT_GE(l.batch_pool().reused(), batches - 8);
    check_batch(*held);
  }
  ASSERT_TRUE(held.has_value());
  check_batch(*held);  // outlives the loader; its buffers go back to a pool nobody uses
}

// Note [Collate with plain stores]: a recycled batch keeps its columns'
// sizes, and the next batch overwrites them in place. Batches of another
// size from the same pool (an epoch with larger batches, then one with
// smaller, whose last batch is shorter still) hold exactly their own samples.
TEST(Loader, RecycledBuffersOfAnotherBatchSizeHoldOnlyTheirBatch) {
  Fixture f;
  auto pool = BatchPool::create(8);
  for (std::uint64_t batch_size : {32u, 7u, 32u}) {
    Loader l(f.cache.get(), f.index,
             {.sampler = {.seed = 11, .shuffle_window = 40},
              .batch_size = batch_size,
              .workers = 2,
              .queue_depth = 3,
              .batch_pool = pool});
    ASSERT_NO_FATAL_FAILURE(
        drain_expecting_each_sample_once(l, f.index.num_samples, [&](const Batch& b) {
          const std::uint64_t want =
              std::min(batch_size, f.index.num_samples - b.number * batch_size);
          ASSERT_EQ(b.sample_ids.size(), want) << "batch " << b.number << " of size " << batch_size;
          ASSERT_EQ(b.columns[0].data.size(), want * 8);
        }));
  }
  EXPECT_GT(pool->reused(), 0u);
}

// Note [One layout per batch]: records shaped like the batch's first are
// copied from its offsets without decoding, and still land whole and in
// place; a record of the same length whose tensor has another shape ([2, 2]
// among [4, 1]) is not taken for one of them: it is refused as ragged.
TEST(Loader, SameLayoutRecordsCollateAndASameLengthRaggedOneIsRefused) {
  ScratchDir remote, local;
  constexpr std::uint64_t kSamples = 96, kRagged = 57;
  Schema schema{{"id", FieldKind::kInt64, DType::kUInt8},
                {"img", FieldKind::kTensor, DType::kUInt8}};
  auto writer = DatasetWriter::create(remote.path() + "/ds", schema, {.shard_bytes = 1024});
  ASSERT_TRUE(writer.is_ok()) << writer.status().to_string();
  auto img = [](std::uint64_t id) {
    return std::vector<std::uint8_t>{static_cast<std::uint8_t>(id),
                                     static_cast<std::uint8_t>(3 * id),
                                     static_cast<std::uint8_t>(id >> 8), 0x5a};
  };
  for (std::uint64_t id = 0; id < kSamples; ++id) {
    std::vector<std::int64_t> shape =
        id == kRagged ? std::vector<std::int64_t>{2, 2} : std::vector<std::int64_t>{4, 1};
    ASSERT_TRUE(writer
                    ->add({FieldValue::int64(static_cast<std::int64_t>(id) * 1000003),
                           FieldValue::tensor(DType::kUInt8, shape, img(id))})
                    .is_ok());
  }
  auto index = writer->finish();
  ASSERT_TRUE(index.is_ok()) << index.status().to_string();
  auto store = std::move(objstore::open_object_store(remote.path())).value();
  ShardCache cache(store.get(), "ds", {.dir = local.path(), .capacity_bytes = 1 << 30});
  Loader l(&cache, *index,
           {.sampler = {.seed = 4, .shuffle_window = kSamples},
            .batch_size = 8,
            .workers = 2,
            .queue_depth = 3});
  std::uint64_t good = 0;
  Status error;
  while (true) {
    auto b = l.next(soon());
    if (!b.is_ok()) {
      error = b.status();
      break;
    }
    if (!b->has_value()) break;
    const Batch& batch = **b;
    const std::size_t n = batch.sample_ids.size();
    ASSERT_EQ(batch.columns[1].shape,
              (std::vector<std::int64_t>{static_cast<std::int64_t>(n), 4, 1}));
    ASSERT_EQ(batch.columns[1].data.size(), n * 4);
    for (std::size_t j = 0; j < n; ++j) {
      const std::uint64_t id = batch.sample_ids[j];
      ASSERT_NE(id, kRagged) << "the ragged sample was collated into batch " << batch.number;
      std::int64_t got;
      std::memcpy(&got, batch.columns[0].data.data() + 8 * j, 8);
      EXPECT_EQ(got, static_cast<std::int64_t>(id) * 1000003);
      EXPECT_EQ(0, std::memcmp(batch.columns[1].data.data() + 4 * j, img(id).data(), 4)) << id;
      ++good;
    }
  }
  EXPECT_EQ(error.code(), Code::kInvalidArgument) << error.to_string();
  EXPECT_NE(error.message().find("ragged"), std::string::npos) << error.to_string();
  EXPECT_LT(good, kSamples);
}

// Every batch of one epoch through `cache`, checked; returns the samples seen.
std::uint64_t epoch(ShardCache* cache, const DatasetIndex& index, std::uint64_t seed) {
  Loader l(cache, index,
           {.sampler = {.seed = seed, .shuffle_window = 40},
            .batch_size = 16,
            .workers = 2,
            .queue_depth = 3});
  std::uint64_t samples = 0;
  while (true) {
    auto b = l.next(soon());
    EXPECT_TRUE(b.is_ok()) << b.status().to_string();
    if (!b.is_ok() || !b->has_value()) break;
    check_batch(**b);
    samples += (*b)->sample_ids.size();
  }
  return samples;
}

// Note [The consumer helps]: a consumer that finds its batch not ready builds
// the next one itself (from open shards only), and the batches are still
// complete, correct and in order. One worker and an instant consumer: the
// consumer is the faster side, so it must have built some.
TEST(Loader, ConsumerBuildsBatchesWhileItWouldWaitInOrder) {
  Fixture f;
  ASSERT_EQ(epoch(f.cache.get(), f.index, 9), f.index.num_samples);  // shards cached and mapped
  Loader l(f.cache.get(), f.index,
           {.sampler = {.seed = 9, .shuffle_window = 40}, .batch_size = 4, .workers = 1,
            .queue_depth = 3});
  ASSERT_NO_FATAL_FAILURE(drain_expecting_each_sample_once(l, f.index.num_samples));
  EXPECT_GT(l.built_by_consumer(), 0u) << "of " << l.num_batches() << " batches";
}

// Note [Sampler windows ahead]: with windows of at least twice the
// positions in flight, the prefetch threads shuffle the window of the
// batches in flight and the one after it before the decode threads ask. The
// batches still follow the sampler's order exactly, across every window.
TEST(Loader, WindowsShuffledAheadKeepTheSamplersOrder) {
  Fixture f;
  const LoaderOptions o{.sampler = {.seed = 6, .shuffle_window = 120}, .state = {.epoch = 2},
                        .batch_size = 4, .workers = 2, .queue_depth = 3};
  // (queue_depth + 1) * batch_size = 16 positions in flight, windows of 120:
  // the windows-ahead path, over 5 windows of the 500 samples.
  ASSERT_GE(o.sampler.shuffle_window, 2 * (o.queue_depth + 1) * o.batch_size);
  const RankSampler order(f.index, o.sampler, 0, 1, o.state);
  for (int round = 0; round < 3; ++round) {
    Loader l(f.cache.get(), f.index, o);
    std::uint64_t k = 0;
    ASSERT_NO_FATAL_FAILURE(drain_expecting_each_sample_once(l, f.index.num_samples,
                                                             [&](const Batch& b) {
      for (std::uint64_t id : b.sample_ids) ASSERT_EQ(id, order.peek(k++)) << "position " << k;
    }));
    EXPECT_EQ(k, f.index.num_samples);
  }
}

// Note [Warm shard mappings]: the second epoch maps no shard again, and the
// parked mappings hold no lease: another process's cache on the same
// directory evicts every shard, after which the next epoch maps the new
// downloads instead of the stale mappings.
TEST(Loader, KeepsShardMappingsAcrossEpochsWithoutBlockingEviction) {
  Fixture f;
  const std::uint64_t shards = f.index.shards.size();
  ASSERT_GE(shards, 4u);
  const MappedShardsStats& st = f.cache->mappings().stats();
  ASSERT_EQ(epoch(f.cache.get(), f.index, 1), f.index.num_samples);
  EXPECT_EQ(st.missed.load(), shards);  // the first epoch maps each shard once
  EXPECT_EQ(st.reused.load(), 0u);
  EXPECT_EQ(f.cache->mappings().parked(), shards);
  ASSERT_EQ(epoch(f.cache.get(), f.index, 2), f.index.num_samples);
  EXPECT_EQ(st.missed.load(), shards);  // none mapped again
  EXPECT_EQ(st.reused.load(), shards);

  // "Another process": its own ShardCache on the same directory, with room
  // for one shard of another dataset only; fetching it must evict all of ours.
  DatasetIndex other_index = testing::write_test_dataset(f.remote.path() + "/ds2", 200, 5000);
  const ShardInfo& theirs = other_index.shards[0];
  ShardCache other(f.store.get(), "ds2", {.dir = f.local.path(), .capacity_bytes = theirs.bytes});
  {
    auto lease = other.acquire(theirs, soon());
    ASSERT_TRUE(lease.is_ok()) << lease.status().to_string();  // not ResourceExhausted
  }
  EXPECT_EQ(other.stats().evictions.load(), shards);

  const std::uint64_t downloads = f.cache->stats().downloads.load();
  ASSERT_EQ(epoch(f.cache.get(), f.index, 3), f.index.num_samples);  // check_batch: right bytes
  EXPECT_EQ(f.cache->stats().downloads.load(), downloads + shards);
  EXPECT_EQ(st.stale.load(), shards);  // new files: no old mapping was reused
  EXPECT_EQ(st.reused.load(), shards);
  EXPECT_EQ(st.missed.load(), 2 * shards);
}

TEST(Loader, StopsEarlyWithoutHanging) {
  Fixture f;
  Loader l(f.cache.get(), f.index, {.batch_size = 4, .workers = 3, .queue_depth = 2});
  auto b = l.next(soon());
  ASSERT_TRUE(b.is_ok()) << b.status().to_string();
  EXPECT_TRUE(b->has_value());
}  // the destructor joins threads blocked on a full queue

TEST(Loader, CorruptCachedShardIsDataLossNotASample) {
  Fixture f;
  // Warm the cache, then flip a byte inside a record of the cached copy.
  const ShardInfo& sh = f.index.shards[1];
  std::string path;
  {
    auto lease = f.cache->acquire(sh, soon());
    ASSERT_TRUE(lease.is_ok());
    path = lease->path();
  }
  Fd fd(::open(path.c_str(), O_RDWR));
  ASSERT_TRUE(fd.valid());
  std::uint8_t byte;
  ASSERT_EQ(::pread(fd.get(), &byte, 1, 40), 1);
  byte ^= 1;
  ASSERT_EQ(::pwrite(fd.get(), &byte, 1, 40), 1);
  Loader l(f.cache.get(), f.index, {.sampler = {.shuffle = false}, .batch_size = 32});
  Status error;
  for (int i = 0; i < 100 && error.is_ok(); ++i) {
    auto b = l.next(soon());
    if (!b.is_ok()) error = b.status();
    else if (!b->has_value()) break;
  }
  EXPECT_EQ(error.code(), Code::kDataLoss) << error.to_string();
  EXPECT_NE(error.message().find(path), std::string::npos) << error.to_string();
}

// A producer slowed on purpose: every shard download takes `delay` longer.
class SlowStore final : public objstore::testing::ForwardingObjectStore {
 public:
  SlowStore(ObjectStore& inner, std::chrono::milliseconds delay)
      : ForwardingObjectStore(inner), delay_(delay) {}
  Status get_to_file(const std::string& key, const std::string& dst, Deadline d) override {
    std::this_thread::sleep_for(delay_);  // the injected fault, not synchronisation
    return inner_.get_to_file(key, dst, d);
  }

 private:
  std::chrono::milliseconds delay_;
};

// Batch::wait_seconds is the time next() blocked. With every shard download
// slowed by 150 ms, the first batch cannot exist before one download ends,
// and an instant consumer spends the epoch waiting: at least one delay per
// round of `fetchers` parallel downloads.
TEST(Loader, ReportsTheWaitASlowProducerCauses) {
  Fixture f;
  const auto delay = std::chrono::milliseconds(150);
  SlowStore slow(*f.store, delay);
  ScratchDir local;
  ShardCache cache(&slow, "ds", ShardCacheOptions{.dir = local.path(), .capacity_bytes = 1 << 30});
  const int fetchers = 2;
  Loader l(&cache, f.index, {.batch_size = 8, .fetchers = fetchers});
  std::uint64_t batches = 0;
  double first_wait = -1, total_wait = 0;
  while (true) {
    auto b = l.next(soon());
    ASSERT_TRUE(b.is_ok()) << b.status().to_string();
    if (!b->has_value()) break;
    if (first_wait < 0) first_wait = (*b)->wait_seconds;
    total_wait += (*b)->wait_seconds;
    ++batches;
  }
  EXPECT_EQ(batches, l.num_batches());
  EXPECT_EQ(batches, (500u + 7) / 8);
  const double d = std::chrono::duration<double>(delay).count();
  ASSERT_GE(f.index.shards.size(), 3u);
  const double rounds = std::ceil(static_cast<double>(f.index.shards.size()) / fetchers);
  // 0.9: the loader's threads start in its constructor, a moment before next().
  EXPECT_GE(first_wait, 0.9 * d);
  EXPECT_GE(total_wait, 0.9 * rounds * d) << f.index.shards.size() << " shards";

  // The same epoch from the now-warm cache: no download, next() barely waits.
  Loader warm(&cache, f.index, {.batch_size = 8, .fetchers = fetchers});
  double warm_wait = 0;
  while (true) {
    auto b = warm.next(soon());
    ASSERT_TRUE(b.is_ok()) << b.status().to_string();
    if (!b->has_value()) break;
    warm_wait += (*b)->wait_seconds;
  }
  EXPECT_LT(warm_wait, total_wait / 2) << "a wait that does not follow the producer";
}

}  // namespace
}  // namespace kiln::data
