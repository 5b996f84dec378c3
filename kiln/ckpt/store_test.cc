// Checkpoints straight to an object store (CheckpointOptions::root a URL):
// no shared filesystem, each rank streams its own shard, rank 0's manifest
// commits the step, retention deletes on the store, and loads go through a
// local cache; on file:// and on a real s3rver (skipped where absent).
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include "kiln/base/file.h"
#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/load.h"
#include "kiln/ckpt/remote.h"
#include "kiln/ckpt/remote_load.h"
#include "kiln/ckpt/retention.h"
#include "kiln/ckpt/testing/run_options.h"
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

// Two ranks save steps 1..3 (keep 2) to `url`, then load the newest back on
// 2 ranks and re-sliced onto 3, bit for bit; nothing is written locally
// except the loaders' caches.
void two_ranks_round_trip(const std::string& url, const LocalS3Server* s3) {
  TempDir cache;
  auto saved = comm::testing::run_ranks(
      2,
      [&](comm::Communicator& comm) -> Status {
        KILN_ASSIGN_OR_RETURN(auto store, open_store(url, s3));
        KILN_ASSIGN_OR_RETURN(
            auto ck,
            Checkpointer::create(
                {.root = url, .comm = &comm, .retention = {.keep_last = 2}, .store = store.get()}));
        for (std::int64_t step = 1; step <= 3; ++step) {
          TestState s(step, comm.rank(), comm.size());
          KILN_RETURN_IF_ERROR(ck->save(s.view(), step, soon()));
        }
        TestState again(3, comm.rank(), comm.size());
        auto dup = ck->save_async(again.view(), 3);
        if (dup.status().code() != Code::kAlreadyExists) {
          return internal_error("saving step 3 twice: " + dup.status().to_string());
        }
        return Status::ok();
      },
      testing::quick(std::chrono::seconds(60)));
  ASSERT_TRUE(saved.ok()) << saved.report;

  auto store = open_store(url, s3).value();
  EXPECT_EQ(list_remote_committed_steps(*store, soon()).value(), (std::vector<std::int64_t>{3, 2}));
  EXPECT_TRUE(store->list("step-1/", soon()).value().empty()) << "retention left step 1";
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
    auto ck = Checkpointer::create({.root = s3().url("big"), .store = store.get()});
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

// Rank 1's uploads all fail: the step commits nowhere, rank 0's shard object
// is deleted again, and every rank gets the error naming rank 1.
class UploadsFail final : public objstore::testing::ForwardingObjectStore {
 public:
  using ForwardingObjectStore::ForwardingObjectStore;
  Result<std::unique_ptr<objstore::ObjectWriter>> open_writer(const std::string& key,
                                                              Deadline) override {
    return unavailable("injected: upload " + key);
  }
};

TEST(StoreCheckpoints, OneRanksFailedUploadCommitsNothing) {
  TempDir remote;
  const std::string url = "file://" + remote.path() + "/run";
  auto r = comm::testing::run_ranks(
      2,
      [&](comm::Communicator& comm) -> Status {
        auto inner = objstore::open_object_store(url).value();
        UploadsFail failing(*inner);
        objstore::ObjectStore* store = comm.rank() == 1 ? &failing : inner.get();
        KILN_ASSIGN_OR_RETURN(auto ck,
                              Checkpointer::create({.root = url, .comm = &comm, .store = store}));
        TestState s(1, comm.rank(), comm.size());
        Status st = ck->save(s.view(), 1, soon());
        if (st.is_ok() || st.message().find("rank 1") == std::string::npos ||
            st.message().find("injected: upload step-1/shard-00001.bin") == std::string::npos) {
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

TEST(StoreCheckpoints, ARemoteTierBesideAUrlRootIsRefused) {
  TempDir remote;
  auto ck = Checkpointer::create(
      {.root = "file://" + remote.path() + "/a", .remote = "file://" + remote.path() + "/b"});
  EXPECT_EQ(ck.status().code(), Code::kInvalidArgument) << ck.status().to_string();
}

}  // namespace
}  // namespace kiln::ckpt
