// The remote checkpoint tier (remote.h, remote_load.h): saves upload to an
// object store (file:// and a real s3rver), a step is remote-committed iff
// its manifest is there, retention mirrors the local policy, and a lost local
// root is recovered from the remote bit for bit.
#include "kiln/ckpt/remote.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "kiln/base/file.h"
#include "kiln/base/fs.h"
#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/remote_load.h"
#include "kiln/ckpt/testing/run_options.h"
#include "kiln/ckpt/testing/test_state.h"
#include "kiln/comm/testing/multiprocess.h"
#include "kiln/objstore/file_object_store.h"
#include "kiln/objstore/s3/s3_object_store.h"
#include "kiln/objstore/s3/testing/s3rver_test.h"
#include "kiln/objstore/testing/forwarding_object_store.h"

namespace kiln::ckpt {
namespace {

using testing::check_loaded;
using testing::TempDir;
using testing::TestState;

Deadline soon() { return Deadline::after_seconds(20); }

// Wraps a store and fails every remove of a key other than a manifest, as a
// crash in the middle of deleting a step would leave it.
class ShardRemoveFails final : public objstore::testing::ForwardingObjectStore {
 public:
  using ForwardingObjectStore::ForwardingObjectStore;
  Status remove(const std::string& key, Deadline d) override {
    if (key.find(kManifestName) == std::string::npos) {
      return unavailable("injected: remove " + key);
    }
    return inner_.remove(key, d);
  }
  std::string describe() const override { return "shard-remove-fails+" + inner_.describe(); }
};

// Saves `steps` under `root` with remote tier `store`, keeping the last two.
void save_steps(const std::string& root, objstore::ObjectStore& store,
                const std::vector<std::int64_t>& steps) {
  auto ck = Checkpointer::create(
      {.root = root, .retention = {.keep_last = 2}, .remote = "test", .remote_store = &store});
  ASSERT_TRUE(ck.is_ok()) << ck.status().to_string();
  for (auto step : steps) {
    TestState s(step, 0, 1);
    Status st = (*ck)->save(s.view(), step, soon());
    ASSERT_TRUE(st.is_ok()) << st.to_string();
  }
}

std::vector<std::int64_t> remote_steps(objstore::ObjectStore& store) {
  auto r = list_remote_committed_steps(store, soon());
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
  return r.is_ok() ? *r : std::vector<std::int64_t>{};
}

// Save 3 steps (keep 2), lose the local root, load from the remote: the
// newest step, bit for bit; an interrupted upload of a newer step (shards,
// no manifest) is ignored, then removed by retention after the next commit.
void round_trip(objstore::ObjectStore& store) {
  TempDir local, cache;
  std::string root = local.path() + "/ckpt";
  save_steps(root, store, {1, 2, 3});
  EXPECT_EQ(remote_steps(store), (std::vector<std::int64_t>{3, 2}));
  auto listed = store.list("step-1/", soon());
  ASSERT_TRUE(listed.is_ok());
  EXPECT_TRUE(listed->empty()) << "retention left objects of step 1";

  // A crash mid-upload of step 4: its shard is there, its manifest is not.
  std::string shard = root + "/step-3/" + shard_file_name(0);
  ASSERT_TRUE(upload_step_file(store, 4, shard_file_name(0), shard, soon()).is_ok());
  EXPECT_EQ(remote_steps(store), (std::vector<std::int64_t>{3, 2}));

  ASSERT_TRUE(Fs::posix()->remove_tree(root).is_ok());
  auto loaded = load_latest_remote(store, cache.path(), {});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(loaded->step, 3);
  EXPECT_EQ(check_loaded(*loaded, 3, 0, 1), "");

  save_steps(root, store, {5});
  EXPECT_EQ(remote_steps(store), (std::vector<std::int64_t>{5, 3}));
  listed = store.list("step-4/", soon());
  ASSERT_TRUE(listed.is_ok());
  EXPECT_TRUE(listed->empty()) << "retention left the interrupted upload of step 4";
}

TEST(RemoteTier, FileStoreRoundTripAfterLosingTheLocalRoot) {
  TempDir remote;
  auto store = objstore::make_file_object_store(remote.path() + "/bucket");
  round_trip(*store);
}

using RemoteTierS3 = objstore::s3::testing::S3rverTest;

TEST_F(RemoteTierS3, RoundTripAfterLosingTheLocalRoot) {
  auto store = open_store("run");
  ASSERT_NE(store, nullptr);
  round_trip(*store);
}

TEST(RemoteTier, OpensTheStoreFromTheUrl) {
  TempDir local, remote, cache;
  std::string url = "file://" + remote.path() + "/r";
  {
    auto ck = Checkpointer::create({.root = local.path() + "/ckpt", .remote = url});
    ASSERT_TRUE(ck.is_ok()) << ck.status().to_string();
    TestState s(7, 0, 1);
    ASSERT_TRUE((*ck)->save(s.view(), 7, soon()).is_ok());
    EXPECT_GE((*ck)->last_stats().remote_s, 0.0);
  }
  auto loaded = load_latest_remote(url, cache.path(), {});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(check_loaded(*loaded, 7, 0, 1), "");
}

TEST(RemoteTier, UploadFailureIsReportedAndTheLocalCommitStands) {
  TempDir local;
  // The remote "directory" is a regular file: every put fails.
  std::string blocker = local.path() + "/not-a-dir";
  std::ofstream(blocker) << "x";
  auto store = objstore::make_file_object_store(blocker);
  std::string root = local.path() + "/ckpt";
  auto ck = Checkpointer::create({.root = root, .remote = "test", .remote_store = store.get()});
  ASSERT_TRUE(ck.is_ok());
  TestState s(1, 0, 1);
  Status st = (*ck)->save(s.view(), 1, soon());
  EXPECT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("not on the remote tier"), std::string::npos) << st.to_string();
  EXPECT_NE(st.message().find("step 1"), std::string::npos) << st.to_string();
  // Reported once, and the local checkpoint is intact.
  EXPECT_TRUE((*ck)->wait(soon()).is_ok());
  auto loaded = load_latest(root, {});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(check_loaded(*loaded, 1, 0, 1), "");
}

// Flips one byte of a file in place.
void flip_byte(const std::string& path, std::streamoff at) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f.good()) << path;
  char c = 0;
  f.seekg(at);
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x5a);
  f.seekp(at);
  f.write(&c, 1);
}

TEST(RemoteTier, CorruptCachedCopyIsDownloadedAgain) {
  TempDir local, remote, cache;
  auto store = objstore::make_file_object_store(remote.path());
  save_steps(local.path() + "/ckpt", *store, {1, 2});
  ASSERT_TRUE(load_latest_remote(*store, cache.path(), {}).is_ok());
  flip_byte(cache.path() + "/step-2/" + shard_file_name(0), 100);
  auto loaded = load_latest_remote(*store, cache.path(), {});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(loaded->step, 2);
  EXPECT_EQ(check_loaded(*loaded, 2, 0, 1), "");
}

TEST(RemoteTier, CorruptRemoteStepIsSkipped) {
  TempDir local, remote, cache;
  auto store = objstore::make_file_object_store(remote.path());
  save_steps(local.path() + "/ckpt", *store, {1, 2});
  flip_byte(remote.path() + "/step-2/" + shard_file_name(0), 100);
  auto loaded = load_latest_remote(*store, cache.path(), {});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(loaded->step, 1);
  EXPECT_EQ(check_loaded(*loaded, 1, 0, 1), "");
}

TEST(RemoteTier, TwoRanksUploadThenOneAndThreeLoad) {
  TempDir local, remote, cache;
  std::string root = local.path() + "/ckpt";
  std::string url = "file://" + remote.path();
  auto r = comm::testing::run_ranks(
      2,
      [&](comm::Communicator& comm) -> Status {
        KILN_ASSIGN_OR_RETURN(auto ck,
                              Checkpointer::create({.root = root, .comm = &comm, .remote = url}));
        for (std::int64_t step : {4, 8}) {
          TestState s(step, comm.rank(), comm.size());
          KILN_RETURN_IF_ERROR(ck->save(s.view(), step, soon()));
        }
        return Status::ok();
      },
      testing::quick());
  ASSERT_TRUE(r.ok()) << r.report;
  ASSERT_TRUE(Fs::posix()->remove_tree(root).is_ok());
  auto loaded = load_latest_remote(url, cache.path(), {});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(loaded->step, 8);
  EXPECT_EQ(check_loaded(*loaded, 8, 0, 1), "");
  // Three ranks agree on the step and re-slice, each with its own cache.
  r = comm::testing::run_ranks(
      3,
      [&](comm::Communicator& comm) -> Status {
        LoadOptions o{comm.rank(), comm.size(), &comm, std::chrono::seconds(20)};
        std::string mine = fmt::format("{}/rank-{}", cache.path(), comm.rank());
        KILN_ASSIGN_OR_RETURN(auto st, load_latest_remote(url, mine, o));
        std::string bad = check_loaded(st, 8, comm.rank(), comm.size());
        if (st.step != 8 || !bad.empty()) {
          return data_loss(fmt::format("rank {}: step {}: {}", comm.rank(), st.step, bad));
        }
        return Status::ok();
      },
      testing::quick());
  EXPECT_TRUE(r.ok()) << r.report;
}

TEST(RemoteTier, HalfDeletedStepIsNotCommitted) {
  TempDir local, remote;
  auto inner = objstore::make_file_object_store(remote.path());
  ShardRemoveFails store(*inner);
  // Retention of step 1 (keep 2) deletes its manifest, then fails on its shard.
  save_steps(local.path() + "/ckpt", store, {1, 2, 3});
  EXPECT_EQ(remote_steps(store), (std::vector<std::int64_t>{3, 2}));
  auto left = store.list("step-1/", soon());
  ASSERT_TRUE(left.is_ok());
  ASSERT_EQ(left->size(), 1u) << "the shard of step 1 should be left behind";
  EXPECT_EQ((*left)[0].key, remote_key(1, shard_file_name(0)));
}

// Note [Abandoned uploads]: after a commit, retention aborts the uploads a
// dead writer left at or below the newest committed step, and leaves those
// above it (a save may be in flight there).
TEST(RemoteTier, RetentionAbortsUploadsAbandonedAtOrBelowTheNewestCommit) {
  TempDir local, remote;
  auto store = objstore::make_file_object_store(remote.path());
  save_steps(local.path() + "/ckpt", *store, {1, 2});
  // What a rank killed while uploading leaves: a writer's temp file.
  auto leave = [&](std::int64_t step) {
    const std::string path = remote.path() + "/" + remote_key(step, shard_file_name(1));
    ASSERT_TRUE(make_dirs(remote.path() + "/" + step_dir_name(step)).is_ok());
    std::ofstream(temp_path_for(path)) << "partial";
  };
  leave(2);
  leave(4);
  ASSERT_EQ(store->list_pending_uploads("", soon()).value().size(), 2u);
  save_steps(local.path() + "/ckpt", *store, {3});
  auto left = store->list_pending_uploads("", soon());
  ASSERT_TRUE(left.is_ok()) << left.status().to_string();
  ASSERT_EQ(left->size(), 1u);
  EXPECT_EQ((*left)[0].key, remote_key(4, shard_file_name(1)));
  EXPECT_EQ(remote_steps(*store), (std::vector<std::int64_t>{3, 2}));
}

TEST(RemoteTier, OneRanksUploadFailureKeepsTheStepUncommittedRemotely) {
  TempDir local, remote;
  std::string root = local.path() + "/ckpt";
  std::string blocker = local.path() + "/not-a-dir";
  std::ofstream(blocker) << "x";
  auto r = comm::testing::run_ranks(
      2,
      [&](comm::Communicator& comm) -> Status {
        // Rank 1 reaches the remote through a store whose puts all fail.
        auto store = objstore::make_file_object_store(comm.rank() == 1 ? blocker : remote.path());
        KILN_ASSIGN_OR_RETURN(
            auto ck,
            Checkpointer::create(
                {.root = root, .comm = &comm, .remote = "test", .remote_store = store.get()}));
        TestState s(1, comm.rank(), comm.size());
        Status st = ck->save(s.view(), 1, soon());
        const char* want = comm.rank() == 1 ? "Not a directory" : "failed on rank(s) 1";
        if (st.is_ok() || st.message().find(want) == std::string::npos) {
          return internal_error(fmt::format("rank {}: want an error with '{}', got {}", comm.rank(),
                                            want, st.to_string()));
        }
        return Status::ok();
      },
      testing::quick());
  ASSERT_TRUE(r.ok()) << r.report;
  auto store = objstore::make_file_object_store(remote.path());
  EXPECT_TRUE(remote_steps(*store).empty()) << "a manifest was uploaded with a shard missing";
  auto shard0 = store->head(remote_key(1, shard_file_name(0)), soon());
  EXPECT_TRUE(shard0.is_ok()) << "rank 0's shard should have been uploaded";
  auto loaded = load_latest(root, {});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(loaded->step, 1);
}

}  // namespace
}  // namespace kiln::ckpt
