// The in-memory tier: snapshots outlive the processes that took them,
// a rank whose snapshot is gone gets its buddy's replica, and every case it
// cannot serve falls back to storage. Ranks are real processes.
#include "kiln/ckpt/memory_tier.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <csignal>
#include <cstring>

#include "kiln/base/fd.h"
#include "kiln/base/file.h"
#include "kiln/base/fs.h"
#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/testing/run_options.h"
#include "kiln/ckpt/testing/test_state.h"
#include "kiln/comm/testing/multiprocess.h"

namespace kiln::ckpt {
namespace {

using testing::quick;

using comm::Communicator;
using comm::testing::run_ranks;
using testing::check_loaded;
using testing::TempDir;
using testing::TestState;

struct Dirs {
  TempDir tmp;
  std::string root = tmp.path() + "/ckpt";
  std::string mem = tmp.path() + "/mem";
};

Result<std::unique_ptr<MemoryTier>> tier_for(const std::string& mem, Communicator* comm) {
  return MemoryTier::open({.dir = mem, .comm = comm, .timeout = std::chrono::seconds(20)});
}

// `world` ranks save `steps` to storage and (with `mem`) the memory tier.
// `rows0`: rows of the test state's first tensor (TestState).
void save_with(int world, const Dirs& d, std::vector<std::int64_t> steps, bool use_memory = true,
               std::int64_t rows0 = 37) {
  auto r = run_ranks(
      world,
      [&](Communicator& comm) -> Status {
        std::unique_ptr<MemoryTier> tier;
        if (use_memory) {
          KILN_ASSIGN_OR_RETURN(tier, tier_for(d.mem, &comm));
        }
        KILN_ASSIGN_OR_RETURN(
            auto ck, Checkpointer::create({.root = d.root, .comm = &comm, .memory = tier.get()}));
        for (auto step : steps) {
          TestState s(step, comm.rank(), comm.size(), rows0);
          KILN_RETURN_IF_ERROR(ck->save(s.view(), step, Deadline::after_seconds(20)));
        }
        return Status::ok();
      },
      quick());
  ASSERT_TRUE(r.ok()) << r.report;
}

struct Expect {
  std::int64_t step;
  bool from_memory;
  int from_replica = 0;
};

// `world` fresh processes recover through recover_latest and check every byte.
void expect_recover(int world, const Dirs& d, Expect want) {
  auto r = run_ranks(
      world,
      [&](Communicator& comm) -> Status {
        KILN_ASSIGN_OR_RETURN(auto tier, tier_for(d.mem, &comm));
        LoadOptions o{comm.rank(), comm.size(), &comm, std::chrono::seconds(20)};
        bool from_memory = false;
        KILN_ASSIGN_OR_RETURN(auto st, recover_latest(d.root, tier.get(), o, &from_memory));
        std::string bad = check_loaded(st, want.step, comm.rank(), comm.size());
        if (!bad.empty()) return data_loss(fmt::format("rank {}: {}", comm.rank(), bad));
        if (st.step != want.step || from_memory != want.from_memory) {
          return internal_error(fmt::format("rank {}: got step {} from {}, want {} from {}",
                                            comm.rank(), st.step, from_memory ? "memory" : "disk",
                                            want.step, want.from_memory ? "memory" : "disk"));
        }
        if (from_memory && tier->last_recovery().from_replica != want.from_replica) {
          return internal_error(fmt::format("rank {}: {} ranks used a replica, want {}",
                                            comm.rank(), tier->last_recovery().from_replica,
                                            want.from_replica));
        }
        return Status::ok();
      },
      quick());
  ASSERT_TRUE(r.ok()) << r.report;
}

std::vector<std::string> names(const std::string& dir) {
  auto r = list_dir(dir);
  return r.is_ok() ? *r : std::vector<std::string>{};
}

void flip_byte(const std::string& path, off_t offset) {
  Fd fd(::open(path.c_str(), O_RDWR));
  ASSERT_TRUE(fd.valid()) << path;
  unsigned char b = 0;
  ASSERT_EQ(::pread(fd.get(), &b, 1, offset), 1);
  b ^= 0x01;
  ASSERT_EQ(::pwrite(fd.get(), &b, 1, offset), 1);
}

TEST(MemoryTier, DefaultDirIsOnShmAndKeyedByTheRoot) {
  std::string a = default_memory_dir("/ckpt/job-a"), b = default_memory_dir("/ckpt/job-b");
  EXPECT_EQ(a.rfind("/dev/shm/kiln-ckpt-", 0), 0u) << a;
  EXPECT_NE(a, b);
  EXPECT_EQ(a, default_memory_dir("/ckpt/job-a/"));
}

TEST(MemoryTier, OneRankSnapshotOutlivesTheProcessAndOnlyTheNewestIsKept) {
  Dirs d;
  save_with(1, d, {1, 2, 3});
  // The retired step's files wait, without records, to be written over by the
  // next store (Note [Recycled snapshot files]).
  EXPECT_EQ(names(d.mem + "/rank-0"), (std::vector<std::string>{"spare", "step-3"}));
  EXPECT_EQ(names(d.mem + "/rank-0/spare"), std::vector<std::string>{"shard-00000.bin"});
  // Storage gone: what comes back can only have come from memory.
  ASSERT_TRUE(Fs::posix()->remove_tree(d.root).is_ok());
  expect_recover(1, d, {3, true});
}

TEST(MemoryTier, RestartedRanksRecoverWithoutReadingStorage) {
  Dirs d;
  save_with(3, d, {4, 5});
  // Each rank holds its own snapshot and its predecessor's replica.
  EXPECT_EQ(names(d.mem + "/rank-1/step-5"),
            (std::vector<std::string>{"shard-00000.bin", "shard-00000.json", "shard-00001.bin",
                                      "shard-00001.json"}));
  ASSERT_TRUE(Fs::posix()->remove_tree(d.root).is_ok());
  expect_recover(3, d, {5, true, 0});
}

TEST(MemoryTier, LostHostGetsItsSnapshotFromTheBuddy) {
  for (int world : {2, 3}) {
    SCOPED_TRACE(fmt::format("world {}", world));
    Dirs d;
    save_with(world, d, {7});
    // Rank 1's host is gone, and with it its memory; storage too.
    ASSERT_TRUE(Fs::posix()->remove_tree(d.mem + "/rank-1").is_ok());
    ASSERT_TRUE(Fs::posix()->remove_tree(d.root).is_ok());
    expect_recover(world, d, {7, true, 1});
  }
}

// The spare holds an older step's bytes without records: never a snapshot.
TEST(MemoryTier, TheRecycledSpareIsNeverRecovered) {
  Dirs d;
  save_with(2, d, {1, 2});
  for (int r : {0, 1}) {
    auto dir = fmt::format("{}/rank-{}", d.mem, r);
    ASSERT_EQ(names(dir), (std::vector<std::string>{"spare", "step-2"}));
    ASSERT_TRUE(Fs::posix()->remove_tree(dir + "/step-2").is_ok());
  }
  expect_recover(2, d, {2, false});
}

// A rank process SIGKILLed in the middle of a save, its host memory lost with
// it: the restarted job gets its newest complete step from its buddy's memory.
TEST(MemoryTier, KilledRankRecoversFromItsBuddysMemory) {
  Dirs d;
  save_with(2, d, {1, 2});
  auto killed = run_ranks(
      2,
      [&](Communicator& comm) -> Status {
        KILN_ASSIGN_OR_RETURN(auto tier, tier_for(d.mem, &comm));
        KILN_ASSIGN_OR_RETURN(
            auto ck, Checkpointer::create({.root = d.root, .comm = &comm, .memory = tier.get()}));
        TestState s(3, comm.rank(), comm.size());
        KILN_RETURN_IF_ERROR(ck->save_async(s.view(), 3).status());
        if (comm.rank() == 1) ::kill(::getpid(), SIGKILL);
        return ck->wait(Deadline::after_seconds(20));
      },
      quick());
  ASSERT_EQ(killed.ranks.size(), 2u);
  EXPECT_EQ(killed.ranks[1].signal, SIGKILL) << killed.report;
  ASSERT_TRUE(Fs::posix()->remove_tree(d.mem + "/rank-1").is_ok());
  ASSERT_TRUE(Fs::posix()->remove_tree(d.root).is_ok());
  expect_recover(2, d, {2, true, 1});
}

// A rank SIGKILLed while it stages and stores a newer step, its memory
// kept: the staged bytes went into the spare, which holds no record, so both
// ranks restore the previous step from their own snapshots, bit for bit.
TEST(MemoryTier, KilledWhileStoringKeepsThePreviousSnapshot) {
  Dirs d;
  save_with(2, d, {1, 2});
  auto killed = run_ranks(
      2,
      [&](Communicator& comm) -> Status {
        KILN_ASSIGN_OR_RETURN(auto tier, tier_for(d.mem, &comm));
        KILN_ASSIGN_OR_RETURN(
            auto ck, Checkpointer::create({.root = d.root, .comm = &comm, .memory = tier.get()}));
        TestState s(3, comm.rank(), comm.size());
        KILN_RETURN_IF_ERROR(ck->save_async(s.view(), 3).status());
        // Step 3's bytes are staged in the spare by now (save_async copied them).
        if (comm.rank() == 1) ::kill(::getpid(), SIGKILL);
        return ck->wait(Deadline::after_seconds(20));
      },
      quick());
  ASSERT_EQ(killed.ranks.size(), 2u);
  EXPECT_EQ(killed.ranks[1].signal, SIGKILL) << killed.report;
  EXPECT_NE(killed.ranks[0].exit_code, 0) << "rank 0's store of step 3 had no peer";
  ASSERT_TRUE(Fs::posix()->remove_tree(d.root).is_ok());
  expect_recover(2, d, {2, true, 0});
}

// Stores whose bytes were staged in the snapshot file (MemoryTier::stage)
// copy nothing of their own; the replica is copied from the buddy's file
// when both ranks share the memory directory, and streamed otherwise; the
// copying successor checksums the snapshot for its owner's record. Either
// way, a rank whose own memory is gone restores its state bit for bit from
// the replica.
TEST(MemoryTier, StagedStoresRecoverBitIdenticallyOnBothReplicaPaths) {
  for (bool shared_dir : {true, false}) {
    SCOPED_TRACE(shared_dir ? "one memory directory" : "a directory per rank");
    Dirs d;
    auto dir_of = [&](int rank) { return shared_dir ? d.mem : fmt::format("{}-{}", d.mem, rank); };
    auto saved = run_ranks(
        2,
        [&](Communicator& comm) -> Status {
          KILN_ASSIGN_OR_RETURN(auto tier, tier_for(dir_of(comm.rank()), &comm));
          KILN_ASSIGN_OR_RETURN(
              auto ck, Checkpointer::create({.root = d.root, .comm = &comm, .memory = tier.get()}));
          for (std::int64_t step : {1, 2, 3}) {
            TestState s(step, comm.rank(), comm.size());
            KILN_RETURN_IF_ERROR(ck->save(s.view(), step, Deadline::after_seconds(20)));
            MemoryStoreStats st = tier->last_store();
            if (st.step != step || !st.staged || st.replica_on_host != shared_dir ||
                st.sums_from_successor != shared_dir) {
              return internal_error(fmt::format(
                  "rank {} step {}: stats step {} staged {} replica_on_host {} "
                  "sums_from_successor {}",
                  comm.rank(), step, st.step, st.staged, st.replica_on_host,
                  st.sums_from_successor));
            }
          }
          return Status::ok();
        },
        quick());
    ASSERT_TRUE(saved.ok()) << saved.report;
    ASSERT_TRUE(Fs::posix()->remove_tree(d.root).is_ok());
    ASSERT_TRUE(Fs::posix()->remove_tree(dir_of(1) + "/rank-1").is_ok());
    auto r = run_ranks(
        2,
        [&](Communicator& comm) -> Status {
          KILN_ASSIGN_OR_RETURN(auto tier, tier_for(dir_of(comm.rank()), &comm));
          KILN_ASSIGN_OR_RETURN(auto st, tier->recover(0));
          std::string bad = check_loaded(st, 3, comm.rank(), comm.size());
          if (!bad.empty()) return data_loss(fmt::format("rank {}: {}", comm.rank(), bad));
          if (tier->last_recovery().from_replica != 1) {
            return internal_error(
                fmt::format("{} ranks used a replica, want 1", tier->last_recovery().from_replica));
          }
          return Status::ok();
        },
        quick());
    ASSERT_TRUE(r.ok()) << r.report;
  }
}

// Recovery straight into the caller's memory: a tensor whose rows the
// snapshot holds exactly, and one cut out of a replicated tensor; a corrupt
// snapshot is caught by its checksum and leaves storage to serve.
TEST(MemoryTier, RecoversIntoCallerMemoryAndRejectsACorruptSnapshot) {
  Dirs d;
  save_with(2, d, {4});
  auto recover_into = [&](bool corrupt) {
    auto r = run_ranks(
        2,
        [&](Communicator& comm) -> Status {
          KILN_ASSIGN_OR_RETURN(auto tier, tier_for(d.mem, &comm));
          TestState want(4, comm.rank(), comm.size());
          RowRange b = even_rows(5, comm.rank(), comm.size());
          std::vector<float> w0(want.w0.size(), -1.0f), bias(static_cast<std::size_t>(b.count));
          std::vector<RecoverTarget> into{
              {"w0", reinterpret_cast<std::byte*>(w0.data()), w0.size() * sizeof(float)},
              {"bias", reinterpret_cast<std::byte*>(bias.data()), bias.size() * sizeof(float)}};
          auto got = tier->recover(4, into);
          if (corrupt) {
            if (got.status().code() != Code::kNotFound) {
              return internal_error("corrupt snapshot: want NotFound, got " +
                                    got.status().to_string());
            }
            LoadOptions o{comm.rank(), comm.size(), &comm, std::chrono::seconds(20)};
            KILN_ASSIGN_OR_RETURN(auto st, load_latest(d.root, o));
            std::string bad = check_loaded(st, 4, comm.rank(), comm.size());
            return bad.empty() ? Status::ok() : data_loss("storage: " + bad);
          }
          KILN_RETURN_IF_ERROR(got.status());
          for (auto& e : got->entries) {
            const RecoverTarget* t = nullptr;
            for (const auto& c : into) t = c.name == e.name ? &c : t;
            if (e.in_place != (t != nullptr) || (e.in_place && !e.data.empty())) {
              return internal_error(fmt::format("entry '{}': in_place {}", e.name, e.in_place));
            }
            if (t != nullptr) e.data.assign(t->data, t->data + t->bytes);
          }
          std::string bad = check_loaded(*got, 4, comm.rank(), comm.size());
          return bad.empty() ? Status::ok() : data_loss(bad);
        },
        quick());
    ASSERT_TRUE(r.ok()) << r.report;
  };
  recover_into(false);
  flip_byte(d.mem + "/rank-0/step-4/shard-00000.bin", 12);
  recover_into(true);
}

TEST(MemoryTier, RankAndItsBuddyLostFallsBackToStorage) {
  Dirs d;
  save_with(3, d, {2});
  ASSERT_TRUE(Fs::posix()->remove_tree(d.mem + "/rank-1").is_ok());
  ASSERT_TRUE(Fs::posix()->remove_tree(d.mem + "/rank-2").is_ok());  // held rank 1's replica
  expect_recover(3, d, {2, false});
}

TEST(MemoryTier, CorruptReplicaIsDetectedAndStorageUsed) {
  Dirs d;
  save_with(3, d, {6});
  ASSERT_TRUE(Fs::posix()->remove_tree(d.mem + "/rank-1").is_ok());
  flip_byte(d.mem + "/rank-2/step-6/shard-00001.bin", 40);
  expect_recover(3, d, {6, false});
}

// The fetching rank checksums its replica chunk by chunk as it lands (Note
// [Stream chunks sized to the L2 cache]); a byte flipped in a middle chunk of
// the replica its buddy holds is DataLoss naming the rank, the step and the
// shard, and every rank reports the same reason (storage then serves:
// CorruptReplicaIsDetectedAndStorageUsed).
TEST(MemoryTier, AFlippedByteInTheBuddysReplicaIsDataLossNamingRankStepAndShard) {
  Dirs d;
  // w0 of 100000 x 7 floats: 1.4 MB per rank, three stream chunks.
  constexpr std::int64_t kRows = 100000;
  save_with(2, d, {6}, true, kRows);
  ASSERT_TRUE(Fs::posix()->remove_tree(d.mem + "/rank-1").is_ok());
  flip_byte(d.mem + "/rank-0/step-6/shard-00001.bin", 600000);  // in w0's second chunk
  auto r = run_ranks(
      2,
      [&](Communicator& comm) -> Status {
        KILN_ASSIGN_OR_RETURN(auto tier, tier_for(d.mem, &comm));
        auto got = tier->recover(0);
        const std::string msg = got.status().message();
        for (const char* want : {"step 6 failed: DataLoss: rank 1: ",
                                 "in-memory checkpoint step 6 of rank 1 (shard-00001.bin, the "
                                 "replica rank 0 holds)",
                                 "entry 'w0' checksum"}) {
          if (got.status().code() != Code::kNotFound || msg.find(want) == std::string::npos) {
            return internal_error(fmt::format("rank {}: want NotFound with \"{}\", got {}",
                                              comm.rank(), want, got.status().to_string()));
          }
        }
        return Status::ok();
      },
      quick());
  ASSERT_TRUE(r.ok()) << r.report;
}

TEST(MemoryTier, NewerStorageStepWinsOverAnOlderSnapshot) {
  Dirs d;
  save_with(2, d, {1});
  save_with(2, d, {2}, /*use_memory=*/false);
  expect_recover(2, d, {2, false});
}

TEST(MemoryTier, AnotherWorldSizeLoadsFromStorageResliced) {
  Dirs d;
  save_with(2, d, {3});
  expect_recover(3, d, {3, false});
}

TEST(MemoryTier, NothingAnywhereIsNotFoundOnEveryRank) {
  Dirs d;
  auto r = run_ranks(
      2,
      [&](Communicator& comm) -> Status {
        KILN_ASSIGN_OR_RETURN(auto tier, tier_for(d.mem, &comm));
        auto st = tier->recover();
        if (st.status().code() != Code::kNotFound) {
          return internal_error("want NotFound, got " + st.status().to_string());
        }
        return Status::ok();
      },
      quick());
  ASSERT_TRUE(r.ok()) << r.report;
}

// A memory filesystem too small for rank 0's snapshot: the save still
// commits to storage, rank 1 (whose replica would have come from rank 0)
// does not wait on it, and recovery uses storage.
TEST(MemoryTier, FullMemoryFilesystemKeepsSavingToStorage) {
  Dirs d;
  ASSERT_TRUE(Fs::posix()->make_dir(d.mem).is_ok());
  std::string small = d.mem + "/rank-0";
  ASSERT_TRUE(Fs::posix()->make_dir(small).is_ok());
  if (::mount("tmpfs", small.c_str(), "tmpfs", 0, "size=4k") != 0) {
    GTEST_SKIP() << "needs root to mount a tmpfs: " << std::strerror(errno);
  }
  struct Unmount {
    std::string p;
    ~Unmount() { ::umount2(p.c_str(), MNT_DETACH); }
  } unmount{small};
  save_with(2, d, {1, 2});
  auto steps = list_committed_steps(d.root);
  ASSERT_TRUE(steps.is_ok());
  EXPECT_EQ(*steps, (std::vector<std::int64_t>{2, 1}));
  expect_recover(2, d, {2, false});
}

}  // namespace
}  // namespace kiln::ckpt
