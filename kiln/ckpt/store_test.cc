// Checkpoints straight to an object store (CheckpointOptions::root a URL):
// no shared filesystem, each rank streams its own shard, rank 0's manifest
// commits the step, retention deletes on the store, and loads go through a
// local cache; on file:// and on a real s3rver (skipped where absent).
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>

#include "kiln/base/file.h"
#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/load.h"
#include "kiln/ckpt/remote.h"
#include "kiln/ckpt/remote_load.h"
#include "kiln/ckpt/retention.h"
#include "kiln/ckpt/testing/run_options.h"
#include "kiln/ckpt/testing/stall.h"
#include "kiln/ckpt/testing/test_state.h"
#include "kiln/comm/testing/multiprocess.h"
#include "kiln/objstore/file_object_store.h"
#include "kiln/objstore/s3/s3_object_store.h"
#include "kiln/objstore/s3/testing/s3rver_test.h"
#include "kiln/objstore/testing/forwarding_object_store.h"

namespace kiln::ckpt {
namespace {

using objstore::s3::LocalS3Server;
using testing::check_loaded;
using testing::LetGoAtExit;
using testing::Stall;
using testing::TempDir;
using testing::TestState;

Deadline soon() { return Deadline::after_seconds(30); }

// Opens the store of `url` in the calling process (each forked rank opens
// its own: libcurl handles do not cross fork).
Result<std::unique_ptr<objstore::ObjectStore>> open_store(const std::string& url,
                                                          const LocalS3Server* s3) {
  if (s3 == nullptr) return objstore::open_object_store(url);
  KILN_ASSIGN_OR_RETURN(auto store, objstore::s3::S3ObjectStore::open(url, s3->options()));
  return std::unique_ptr<objstore::ObjectStore>(std::move(store));
}

// Two ranks save steps 1..3 (keep 2) to `url` with their shards stored as
// `layout`, then load the newest back on 2 ranks and re-sliced onto 3, bit
// for bit; nothing is written locally except the loaders' caches.
void two_ranks_round_trip(const std::string& url, const LocalS3Server* s3,
                          ObjectLayout layout = ObjectLayout::kChunks) {
  TempDir cache;
  auto saved = comm::testing::run_ranks(
      2,
      [&](comm::Communicator& comm) -> Status {
        KILN_ASSIGN_OR_RETURN(auto store, open_store(url, s3));
        KILN_ASSIGN_OR_RETURN(
            auto ck,
            Checkpointer::create({.root = url,
                                  .comm = &comm,
                                  .retention = {.keep_last = 2},
                                  .store = store.get(),
                                  .object_layout = layout}));
        for (std::int64_t step = 1; step <= 3; ++step) {
          TestState s(step, comm.rank(), comm.size());
          KILN_RETURN_IF_ERROR(ck->save(s.view(), step, soon()));
        }
        TestState again(3, comm.rank(), comm.size());
        auto dup = ck->save_async(again.view(), 3);
        if (dup.status().code() != Code::kAlreadyExists) {
          return internal_error("saving step 3 twice: " + dup.status().to_string());
        }
        // ~Checkpointer would stop step 3's retention (Note [Retention after the commit]).
        return ck->flush_retention(soon());
      },
      testing::quick(std::chrono::seconds(60)));
  ASSERT_TRUE(saved.ok()) << saved.report;

  auto store = open_store(url, s3).value();
  EXPECT_EQ(list_remote_committed_steps(*store, soon()).value(), (std::vector<std::int64_t>{3, 2}));
  EXPECT_TRUE(store->list("step-1/", soon()).value().empty()) << "retention left step 1";
  auto manifest = read_remote_manifest(*store, 3, soon());
  ASSERT_TRUE(manifest.is_ok()) << manifest.status().to_string();
  for (const auto& shard : manifest->shards) {
    EXPECT_EQ(shard.chunks.empty(), layout == ObjectLayout::kMultipart) << "rank " << shard.rank;
    EXPECT_EQ(store->head(remote_key(3, shard.file), soon()).is_ok(),
              layout == ObjectLayout::kMultipart)
        << "rank " << shard.rank << ": the whole shard object exists only in the multipart layout";
  }
  EXPECT_EQ(manifest->version,
            layout == ObjectLayout::kChunks ? kChunkedFormatVersion : kFormatVersion);
  // The URL alone (s3:// takes endpoint and credentials from the environment).
  auto listed = list_committed_steps(url);
  ASSERT_TRUE(listed.is_ok()) << listed.status().to_string();
  EXPECT_EQ(*listed, (std::vector<std::int64_t>{3, 2}));
  auto whole = load_latest(url, {});
  ASSERT_TRUE(whole.is_ok()) << whole.status().to_string();
  EXPECT_EQ(check_loaded(*whole, 3, 0, 1), "");

  for (int world : {2, 3}) {
    auto loaded = comm::testing::run_ranks(
        world,
        [&](comm::Communicator& comm) -> Status {
          KILN_ASSIGN_OR_RETURN(auto store, open_store(url, s3));
          LoadOptions o{comm.rank(), comm.size(), &comm, std::chrono::seconds(30)};
          KILN_ASSIGN_OR_RETURN(
              auto st, load_latest_remote(
                           *store, fmt::format("{}/w{}-r{}", cache.path(), world, comm.rank()), o));
          std::string bad = check_loaded(st, 3, comm.rank(), comm.size());
          if (!bad.empty()) return data_loss(fmt::format("rank {}: {}", comm.rank(), bad));
          return Status::ok();
        },
        testing::quick(std::chrono::seconds(60)));
    EXPECT_TRUE(loaded.ok()) << "world " << world << ": " << loaded.report;
  }
}

TEST(StoreCheckpoints, FileUrlTwoRanksRoundTrip) {
  TempDir remote;
  two_ranks_round_trip("file://" + remote.path() + "/run", nullptr);
}

TEST(StoreCheckpoints, FileUrlTwoRanksRoundTripMultipartLayout) {
  TempDir remote;
  two_ranks_round_trip("file://" + remote.path() + "/run", nullptr, ObjectLayout::kMultipart);
}

// Saves step `step` of a one-rank run to `store` at `url` in `layout`.
Status save_one(objstore::ObjectStore& store, const std::string& url, std::int64_t step,
                ObjectLayout layout, std::int64_t rows0 = 37) {
  KILN_ASSIGN_OR_RETURN(auto ck, Checkpointer::create({.root = url,
                                                       .retention = {.keep_last = 2},
                                                       .store = &store,
                                                       .object_layout = layout}));
  TestState s(step, 0, 1, rows0);
  KILN_RETURN_IF_ERROR(ck->save(s.view(), step, soon()));
  // ~Checkpointer would stop the step's retention (Note [Retention after the commit]).
  return ck->flush_retention(soon());
}

// Note [Shards as chunk objects]: a rank killed mid-upload leaves chunk
// objects under a step with no manifest. Nothing lists or loads that step
// as committed; a later save of the same step drops the chunks its manifest
// does not name, and the commit of a later step removes the whole step.
TEST(StoreCheckpoints, AnUncommittedStepsOrphanChunksAreNeverListedAndAreRemoved) {
  TempDir remote, cache;
  const std::string url = "file://" + remote.path() + "/run";
  auto store = objstore::open_object_store(url).value();
  ASSERT_TRUE(save_one(*store, url, 1, ObjectLayout::kChunks).is_ok());
  // What killed ranks left: chunks of step 2 (never committed), and a
  // chunk of a rank 5 that no later save of step 3 has.
  ASSERT_TRUE(store->put(remote_key(2, shard_chunk_name(0, 1, 0)), "half a shard", soon()).is_ok());
  ASSERT_TRUE(store->put(remote_key(2, shard_chunk_name(1, 1, 3)), "another", soon()).is_ok());
  ASSERT_TRUE(store->put(remote_key(3, shard_chunk_name(5, 1, 0)), "orphan", soon()).is_ok());

  EXPECT_EQ(list_remote_committed_steps(*store, soon()).value(), (std::vector<std::int64_t>{1}));
  auto steps = summarize_remote_steps(*store, soon()).value();
  ASSERT_EQ(steps.size(), 3u);
  EXPECT_FALSE(steps[0].committed);  // step 3
  EXPECT_FALSE(steps[1].committed);  // step 2
  auto loaded = load_latest_remote(*store, cache.path() + "/a", {});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(loaded->step, 1);

  // Step 3 saved for real: its commit drops rank 5's orphan, and its
  // retention the manifest-less step 2.
  ASSERT_TRUE(save_one(*store, url, 3, ObjectLayout::kChunks).is_ok());
  EXPECT_TRUE(store->list("step-2/", soon()).value().empty()) << "step 2's orphan chunks remain";
  EXPECT_FALSE(store->head(remote_key(3, shard_chunk_name(5, 1, 0)), soon()).is_ok())
      << "an orphan chunk became part of step 3";
  EXPECT_EQ(list_remote_committed_steps(*store, soon()).value(),
            (std::vector<std::int64_t>{3, 1}));
  loaded = load_latest_remote(*store, cache.path() + "/b", {});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(check_loaded(*loaded, 3, 0, 1), "");
}

// The first read of a manifest (the commit's check that the step is not
// committed yet) finds none: as if another attempt's manifest landed just
// after the check.
class BlindCheckStore final : public objstore::testing::ForwardingObjectStore {
 public:
  using ForwardingObjectStore::ForwardingObjectStore;
  Result<std::string> get(const std::string& key, Deadline d) override {
    if (key.ends_with("manifest.json") && !checked_.exchange(true)) {
      return not_found("injected: " + key + " not there yet");
    }
    return inner_.get(key, d);
  }

 private:
  std::atomic<bool> checked_{false};
};

// Note [Publishing a remote step] (commit.cc): two attempts at step 4 that
// both pass the check cannot both commit: the manifest is put only if
// absent, so the later one fails with AlreadyExists, leaves the committed
// manifest as it was and removes its own chunks.
TEST(StoreCheckpoints, TwoAttemptsPassingTheCheckCannotBothCommit) {
  TempDir remote, cache;
  const std::string url = "file://" + remote.path() + "/run";
  auto inner = objstore::open_object_store(url).value();
  BlindCheckStore late_store(*inner);
  // Created before step 4 is committed, so its own list does not refuse it.
  auto late = Checkpointer::create({.root = url, .store = &late_store});
  ASSERT_TRUE(late.is_ok()) << late.status().to_string();
  {
    auto first = Checkpointer::create({.root = url, .store = inner.get()});
    ASSERT_TRUE(first.is_ok()) << first.status().to_string();
    TestState s(4, 0, 1);
    Status st = (*first)->save(s.view(), 4, soon());
    ASSERT_TRUE(st.is_ok()) << st.to_string();
  }
  const std::string committed = inner->get("step-4/manifest.json", soon()).value();
  TestState s(4, 0, 1);
  Status failed = (*late)->save(s.view(), 4, soon());
  EXPECT_EQ(failed.code(), Code::kAlreadyExists) << failed.to_string();
  EXPECT_EQ(inner->get("step-4/manifest.json", soon()).value(), committed)
      << "the later attempt overwrote the committed manifest";
  auto m = read_remote_manifest(*inner, 4, soon()).value();
  EXPECT_EQ(inner->list("step-4/", soon()).value().size(), m.shards[0].chunks.size() + 1)
      << "the later attempt's chunks stayed, or the committed step's went";
  auto loaded = load_latest_remote(*inner, cache.path(), {});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(check_loaded(*loaded, 4, 0, 1), "");
}

// Small chunks, one in flight (so chunk i is stored before chunk i + 1 is
// sent); with `stall` set, the put of chunk 1 stops at `stall` and fails.
class SmallChunksStore final : public objstore::testing::ForwardingObjectStore {
 public:
  SmallChunksStore(objstore::ObjectStore& inner, bool stall)
      : ForwardingObjectStore(inner), stall_(stall) {}
  objstore::UploadShape upload_shape() const override {
    return {.part_bytes = 256, .parallelism = 1};
  }
  Status put(const std::string& key, std::string_view bytes, Deadline d) override {
    if (stall_ && key.ends_with(".chunk-00001")) {
      stall.stop_first();
      return unavailable("injected: put " + key);
    }
    return inner_.put(key, bytes, d);
  }
  Stall stall;

 private:
  const bool stall_;
};

// Note [One attempt's chunks]: a stray rank of an earlier attempt at step 4
// (its upload stalled) fails only after a later attempt committed step 4.
// Its abort deletes the chunks it stored and its commit's cleanup what the
// committed manifest does not name; the committed step still loads.
TEST(StoreCheckpoints, AStrayEarlierAttemptsFailureNeverDeletesTheCommittedStep) {
  TempDir remote, cache;
  const std::string url = "file://" + remote.path() + "/run";
  auto inner = objstore::open_object_store(url).value();
  SmallChunksStore stray_store(*inner, /*stall=*/true), store(*inner, /*stall=*/false);
  auto stray = Checkpointer::create({.root = url, .store = &stray_store});
  ASSERT_TRUE(stray.is_ok()) << stray.status().to_string();
  LetGoAtExit let_go{stray_store.stall};
  TestState earlier(4, 0, 1);
  ASSERT_TRUE((*stray)->save_async(earlier.view(), 4).is_ok());
  ASSERT_TRUE(stray_store.stall.reached(std::chrono::seconds(30)));
  ASSERT_EQ(store.list("step-4/", soon()).value().size(), 1u) << "the stray's chunk 0";

  {
    auto later = Checkpointer::create({.root = url, .store = &store});
    ASSERT_TRUE(later.is_ok()) << later.status().to_string();
    TestState s(4, 0, 1);
    Status st = (*later)->save(s.view(), 4, soon());
    ASSERT_TRUE(st.is_ok()) << st.to_string();
  }
  stray_store.stall.let_go();
  Status failed = (*stray)->wait(soon());
  EXPECT_NE(failed.message().find("injected: put step-4/shard-00000."), std::string::npos)
      << failed.to_string();

  EXPECT_EQ(list_remote_committed_steps(*inner, soon()).value(), (std::vector<std::int64_t>{4}));
  auto loaded = load_latest_remote(*inner, cache.path(), {});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(check_loaded(*loaded, 4, 0, 1), "");
  // Nothing of the stray's is left: only what the manifest names.
  auto m = read_remote_manifest(*inner, 4, soon()).value();
  EXPECT_EQ(inner->list("step-4/", soon()).value().size(), m.shards[0].chunks.size() + 1);
}

// With `stop` set, the first read of a manifest (the commit's check that
// the step is not committed yet) stops at `stall`.
class StalledCommitStore final : public objstore::testing::ForwardingObjectStore {
 public:
  using ForwardingObjectStore::ForwardingObjectStore;
  Result<std::string> get(const std::string& key, Deadline d) override {
    if (stop && key.ends_with("manifest.json")) stall.stop_first();
    return inner_.get(key, d);
  }
  std::atomic<bool> stop{false};
  Stall stall;
};

// Note [Publishing a remote step] (commit.cc): a stray earlier attempt at
// step 4 whose upload finished reaches its commit only after a later attempt
// committed step 4. It must neither prune nor overwrite that step (its chunks
// carry other names): it fails with AlreadyExists, removes exactly its own
// chunks, and the committed step loads with every object it names.
TEST(StoreCheckpoints, AStrayAttemptReachingItsCommitLateLeavesTheCommittedStepWhole) {
  TempDir remote, cache;
  const std::string url = "file://" + remote.path() + "/run";
  auto inner = objstore::open_object_store(url).value();
  StalledCommitStore stray_store(*inner);
  auto stray = Checkpointer::create({.root = url, .store = &stray_store});
  ASSERT_TRUE(stray.is_ok()) << stray.status().to_string();
  LetGoAtExit let_go{stray_store.stall};
  stray_store.stop = true;
  TestState earlier(4, 0, 1);
  ASSERT_TRUE((*stray)->save_async(earlier.view(), 4).is_ok());
  ASSERT_TRUE(stray_store.stall.reached(std::chrono::seconds(30)));
  const std::size_t stray_objects = inner->list("step-4/", soon()).value().size();
  ASSERT_GE(stray_objects, 1u);

  {
    auto later = Checkpointer::create({.root = url, .store = inner.get()});
    ASSERT_TRUE(later.is_ok()) << later.status().to_string();
    TestState s(4, 0, 1);
    Status st = (*later)->save(s.view(), 4, soon());
    ASSERT_TRUE(st.is_ok()) << st.to_string();
  }
  const std::string committed = inner->get("step-4/manifest.json", soon()).value();
  stray_store.stall.let_go();
  Status failed = (*stray)->wait(soon());
  EXPECT_EQ(failed.code(), Code::kAlreadyExists) << failed.to_string();

  EXPECT_EQ(inner->get("step-4/manifest.json", soon()).value(), committed)
      << "the stray overwrote the committed manifest";
  auto m = read_remote_manifest(*inner, 4, soon()).value();
  EXPECT_EQ(inner->list("step-4/", soon()).value().size(), m.shards[0].chunks.size() + 1)
      << "the stray's chunks stayed, or the committed step's went";
  auto loaded = load_latest_remote(*inner, cache.path(), {});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(check_loaded(*loaded, 4, 0, 1), "");
}

using StoreCheckpointsS3 = objstore::s3::testing::S3rverTest;

TEST_F(StoreCheckpointsS3, TwoRanksRoundTrip) {
  ::setenv("AWS_ENDPOINT_URL", s3().endpoint().c_str(), 1);
  ::setenv("AWS_ACCESS_KEY_ID", "S3RVER", 1);
  ::setenv("AWS_SECRET_ACCESS_KEY", "S3RVER", 1);
  two_ranks_round_trip(s3().url("run"), &s3());
}

// Large shards go up as parallel multipart uploads through a bounded number
// of part buffers, and come back bit for bit.
TEST_F(StoreCheckpointsS3, MultipartShards) {
  objstore::s3::S3Options o = s3().options();
  o.part_bytes = 5ull << 20;
  o.upload_parallelism = 3;
  auto store = open_store("big", o);
  ASSERT_NE(store, nullptr);
  TempDir cache;
  const std::int64_t rows0 = 600000;  // w0: 600000 x 7 floats = 16.8 MB
  {
    auto ck = Checkpointer::create({.root = s3().url("big"),
                                    .store = store.get(),
                                    .object_layout = ObjectLayout::kMultipart});
    ASSERT_TRUE(ck.is_ok()) << ck.status().to_string();
    TestState s(5, 0, 1, rows0);
    Status st = (*ck)->save(s.view(), 5, soon());
    ASSERT_TRUE(st.is_ok()) << st.to_string();
  }
  auto shard = store->head(remote_key(5, shard_file_name(0)), soon());
  ASSERT_TRUE(shard.is_ok()) << shard.status().to_string();
  EXPECT_GT(shard->bytes, 3 * o.part_bytes);
  auto loaded = load_latest_remote(*store, cache.path(), {});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(check_loaded(*loaded, 5, 0, 1, rows0), "");
}

// Large shards go up as part-sized chunk objects (one plain PUT each, the
// store's part size), listed in the manifest, and come back bit for bit.
TEST_F(StoreCheckpointsS3, ChunkedShards) {
  objstore::s3::S3Options o = s3().options();
  o.part_bytes = 5ull << 20;
  o.upload_parallelism = 3;
  auto store = open_store("big", o);
  ASSERT_NE(store, nullptr);
  TempDir cache;
  const std::int64_t rows0 = 600000;  // w0: 600000 x 7 floats = 16.8 MB
  ASSERT_TRUE(save_one(*store, s3().url("big"), 5, ObjectLayout::kChunks, rows0).is_ok());
  auto m = read_remote_manifest(*store, 5, soon());
  ASSERT_TRUE(m.is_ok()) << m.status().to_string();
  const ShardRecord& shard = m->shards[0];
  ASSERT_EQ(shard.chunks.size(), (shard.bytes + o.part_bytes - 1) / o.part_bytes);
  for (std::size_t i = 0; i < shard.chunks.size(); ++i) {
    // One attempt's names: the first chunk's tag on every chunk.
    const std::string& first = shard.chunks[0].file;
    const std::string tag = first.substr(0, first.find(".chunk-"));
    EXPECT_EQ(shard.chunks[i].file, fmt::format("{}.chunk-{:05d}", tag, i));
    auto head = store->head(remote_key(5, shard.chunks[i].file), soon());
    ASSERT_TRUE(head.is_ok()) << head.status().to_string();
    EXPECT_EQ(head->bytes, shard.chunks[i].bytes);
    EXPECT_LE(head->bytes, o.part_bytes);
  }
  EXPECT_FALSE(store->head(remote_key(5, shard.file), soon()).is_ok());
  auto pending = store->list_pending_uploads("", soon());
  ASSERT_TRUE(pending.is_ok()) << pending.status().to_string();
  EXPECT_TRUE(pending->empty()) << "a chunked shard began a multipart upload";
  auto loaded = load_latest_remote(*store, cache.path(), {});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(check_loaded(*loaded, 5, 0, 1, rows0), "");
}

// Checkpoints written before chunks (one multipart object per shard) still
// load, and a run that goes on in the chunk layout loads its own steps
// beside them.
TEST_F(StoreCheckpointsS3, AMultipartLayoutCheckpointStillLoads) {
  objstore::s3::S3Options o = s3().options();
  o.part_bytes = 5ull << 20;
  auto store = open_store("old", o);
  ASSERT_NE(store, nullptr);
  TempDir cache;
  const std::int64_t rows0 = 400000;  // 11.2 MB: a multipart upload of 3 parts
  ASSERT_TRUE(save_one(*store, s3().url("old"), 1, ObjectLayout::kMultipart, rows0).is_ok());
  auto old = read_remote_manifest(*store, 1, soon());
  ASSERT_TRUE(old.is_ok()) << old.status().to_string();
  EXPECT_EQ(old->version, kFormatVersion);
  EXPECT_TRUE(old->shards[0].chunks.empty());
  auto loaded = load_latest_remote(*store, cache.path() + "/a", {});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(check_loaded(*loaded, 1, 0, 1, rows0), "");

  ASSERT_TRUE(save_one(*store, s3().url("old"), 2, ObjectLayout::kChunks, rows0).is_ok());
  EXPECT_EQ(list_remote_committed_steps(*store, soon()).value(),
            (std::vector<std::int64_t>{2, 1}));
  loaded = load_latest_remote(*store, cache.path() + "/b", {});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(check_loaded(*loaded, 2, 0, 1, rows0), "");
  auto dir = download_remote_step(*store, 1, cache.path() + "/c", soon());
  ASSERT_TRUE(dir.is_ok()) << dir.status().to_string();
  auto step1 = load_step(*dir, 0, 1);
  ASSERT_TRUE(step1.is_ok()) << step1.status().to_string();
  EXPECT_EQ(check_loaded(*step1, 1, 0, 1, rows0), "");
}

// Rank 1's uploads all fail: the step commits nowhere, rank 0's shard
// objects are deleted again, and every rank gets the error naming rank 1.
class UploadsFail final : public objstore::testing::ForwardingObjectStore {
 public:
  using ForwardingObjectStore::ForwardingObjectStore;
  Result<std::unique_ptr<objstore::ObjectWriter>> open_writer(const std::string& key,
                                                              Deadline) override {
    return unavailable("injected: upload " + key);
  }
  Status put(const std::string& key, std::string_view, Deadline) override {
    return unavailable("injected: upload " + key);
  }
};

class OneRanksFailedUpload : public ::testing::TestWithParam<ObjectLayout> {};

TEST_P(OneRanksFailedUpload, CommitsNothing) {
  TempDir remote;
  const std::string url = "file://" + remote.path() + "/run";
  auto r = comm::testing::run_ranks(
      2,
      [&](comm::Communicator& comm) -> Status {
        auto inner = objstore::open_object_store(url).value();
        UploadsFail failing(*inner);
        objstore::ObjectStore* store = comm.rank() == 1 ? &failing : inner.get();
        KILN_ASSIGN_OR_RETURN(auto ck, Checkpointer::create({.root = url,
                                                             .comm = &comm,
                                                             .store = store,
                                                             .object_layout = GetParam()}));
        TestState s(1, comm.rank(), comm.size());
        Status st = ck->save(s.view(), 1, soon());
        if (st.is_ok() || st.message().find("rank 1") == std::string::npos ||
            st.message().find("injected: upload step-1/shard-00001.") == std::string::npos) {
          return internal_error(fmt::format("rank {}: want the failure of rank 1's upload, got {}",
                                            comm.rank(), st.to_string()));
        }
        return Status::ok();
      },
      testing::quick());
  ASSERT_TRUE(r.ok()) << r.report;
  auto store = objstore::open_object_store(url).value();
  EXPECT_TRUE(list_remote_committed_steps(*store, soon()).value().empty());
  EXPECT_TRUE(store->list("", soon()).value().empty()) << "rank 0's shard of step 1 was left";
}

INSTANTIATE_TEST_SUITE_P(Layouts, OneRanksFailedUpload,
                         ::testing::Values(ObjectLayout::kChunks, ObjectLayout::kMultipart),
                         [](const auto& info) { return std::string(object_layout_name(info.param)); });

TEST(StoreCheckpoints, ARemoteTierBesideAUrlRootIsRefused) {
  TempDir remote;
  auto ck = Checkpointer::create(
      {.root = "file://" + remote.path() + "/a", .remote = "file://" + remote.path() + "/b"});
  EXPECT_EQ(ck.status().code(), Code::kInvalidArgument) << ck.status().to_string();
}

}  // namespace
}  // namespace kiln::ckpt
