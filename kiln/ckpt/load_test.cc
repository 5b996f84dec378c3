// Multi-rank saves (real processes) and loads onto other world sizes; partial
// and corrupt checkpoints are skipped with the reason.
#include "kiln/ckpt/load.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include "kiln/base/fd.h"
#include "kiln/base/file.h"
#include "kiln/base/fs.h"
#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/retention.h"
#include "kiln/ckpt/testing/run_options.h"
#include "kiln/ckpt/testing/test_state.h"
#include "kiln/ckpt/verify.h"
#include "kiln/comm/testing/multiprocess.h"

namespace kiln::ckpt {
namespace {

using testing::quick;

using comm::Communicator;
using comm::testing::run_ranks;
using testing::check_loaded;
using testing::TempDir;
using testing::TestState;

// `world` ranks save `steps` (zstd when asked) under `root`.
void save_with(int world, const std::string& root, std::vector<std::int64_t> steps,
               Compression c = Compression::kNone) {
  auto r = run_ranks(
      world,
      [&](Communicator& comm) -> Status {
        KILN_ASSIGN_OR_RETURN(
            auto ck, Checkpointer::create({.root = root, .comm = &comm, .compression = c}));
        for (auto step : steps) {
          TestState s(step, comm.rank(), comm.size());
          KILN_RETURN_IF_ERROR(ck->save(s.view(), step, Deadline::after_seconds(20)));
        }
        return Status::ok();
      },
      quick());
  ASSERT_TRUE(r.ok()) << r.report;
}

// `world` ranks load the newest step and expect `step`.
void expect_load(int world, const std::string& root, std::int64_t step) {
  auto r = run_ranks(
      world,
      [&](Communicator& comm) -> Status {
        LoadOptions o{comm.rank(), comm.size(), &comm, std::chrono::seconds(20)};
        KILN_ASSIGN_OR_RETURN(auto loaded, load_latest(root, o));
        std::string bad = check_loaded(loaded, step, comm.rank(), comm.size());
        if (!bad.empty()) return data_loss(fmt::format("rank {}: {}", comm.rank(), bad));
        return Status::ok();
      },
      quick());
  ASSERT_TRUE(r.ok()) << r.report;
}

TEST(CkptLoad, FourRanksSaveThreeLoad) {
  TempDir dir;
  save_with(4, dir.path(), {1, 2});
  EXPECT_TRUE(verify_step_status(dir.path() + "/step-2").is_ok());
  auto m = read_manifest(dir.path() + "/step-2");
  ASSERT_TRUE(m.is_ok());
  EXPECT_EQ(m->world_size, 4);
  expect_load(3, dir.path(), 2);
}

TEST(CkptLoad, TwoRanksSaveFourLoadCompressed) {
  TempDir dir;
  save_with(2, dir.path(), {7}, Compression::kZstd);
  expect_load(4, dir.path(), 7);
  expect_load(1, dir.path(), 7);
}

void flip_bit(const std::string& path, std::uint64_t offset) {
  Fd fd(::open(path.c_str(), O_RDWR));
  ASSERT_TRUE(fd.valid()) << path;
  unsigned char b = 0;
  ASSERT_EQ(::pread(fd.get(), &b, 1, static_cast<off_t>(offset)), 1);
  b ^= 0x10;
  ASSERT_EQ(::pwrite(fd.get(), &b, 1, static_cast<off_t>(offset)), 1);
}

TEST(CkptLoad, CorruptShardIsDetectedAndSkippedOnEveryRank) {
  TempDir dir;
  save_with(2, dir.path(), {1, 2});
  std::string shard1 = dir.path() + "/step-2/" + shard_file_name(1);
  flip_bit(shard1, 17);
  Status v = verify_step_status(dir.path() + "/step-2");
  EXPECT_EQ(v.code(), Code::kDataLoss);
  EXPECT_NE(v.message().find("shard-00001.bin"), std::string::npos) << v.to_string();
  EXPECT_EQ(v.message().find("shard-00000.bin"), std::string::npos) << v.to_string();
  // With 2 loading ranks only rank 1 reads the bad rows, yet both fall back to step 1.
  expect_load(2, dir.path(), 1);
}

TEST(CkptLoad, TruncatedShardIsDetectedAndSkipped) {
  TempDir dir;
  save_with(1, dir.path(), {1, 2});
  std::string shard = dir.path() + "/step-2/" + shard_file_name(0);
  auto size = file_size(shard);
  ASSERT_TRUE(size.is_ok());
  ASSERT_EQ(::truncate(shard.c_str(), static_cast<off_t>(*size / 2)), 0);
  Status v = verify_step_status(dir.path() + "/step-2");
  EXPECT_EQ(v.code(), Code::kDataLoss);
  EXPECT_NE(v.message().find("truncated"), std::string::npos) << v.to_string();
  auto loaded = load_latest(dir.path(), {});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(check_loaded(*loaded, 1, 0, 1), "");
}

TEST(CkptLoad, UncommittedAndManifestlessStepsAreIgnored) {
  TempDir dir;
  save_with(1, dir.path(), {1});
  // A crash before the commit (a .tmp directory) and a directory that lost its manifest.
  ASSERT_TRUE(Fs::posix()->make_dir(dir.path() + "/step-5.tmp").is_ok());
  ASSERT_TRUE(Fs::posix()->make_dir(dir.path() + "/step-4").is_ok());
  auto loaded = load_latest(dir.path(), {});
  ASSERT_TRUE(loaded.is_ok()) << loaded.status().to_string();
  EXPECT_EQ(loaded->step, 1);
  EXPECT_EQ(read_manifest(dir.path() + "/step-4").status().code(), Code::kNotFound);
}

TEST(CkptCommit, RanksSavingDifferentStepsCommitNothing) {
  TempDir dir;
  auto r = run_ranks(
      2,
      [&](Communicator& comm) -> Status {
        KILN_ASSIGN_OR_RETURN(auto ck, Checkpointer::create({.root = dir.path(), .comm = &comm}));
        std::int64_t step = 10 + comm.rank();  // out of step
        TestState s(step, comm.rank(), comm.size());
        Status st = ck->save(s.view(), step, Deadline::after_seconds(20));
        if (st.code() != Code::kFailedPrecondition) {
          return internal_error("expected FailedPrecondition, got " + st.to_string());
        }
        // (BusyPolicy::kSkip keeps ranks in step by voting: skip_test.cc.)
        return Status::ok();
      },
      quick());
  ASSERT_TRUE(r.ok()) << r.report;
  auto steps = list_committed_steps(dir.path());
  ASSERT_TRUE(steps.is_ok());
  EXPECT_TRUE(steps->empty());
}

TEST(CkptLoad, AFilterReadsOnlyTheEntriesItKeeps) {
  TempDir dir;
  auto ck = Checkpointer::create({.root = dir.path()});
  ASSERT_TRUE(ck.is_ok()) << ck.status().to_string();
  TestState s(4, 0, 1);
  ASSERT_TRUE((*ck)->save(s.view(), 4, Deadline::after_seconds(20)).is_ok());
  auto all = load_step(dir.path() + "/step-4", 0, 1);
  ASSERT_TRUE(all.is_ok()) << all.status().to_string();
  EXPECT_EQ(all->entries.size(), 5u);
  auto some = load_step(dir.path() + "/step-4", 0, 1,
                        [](std::string_view name) { return name == "w0" || name == "step"; });
  ASSERT_TRUE(some.is_ok()) << some.status().to_string();
  ASSERT_EQ(some->entries.size(), 2u);
  EXPECT_EQ(some->find("w1"), nullptr);
  EXPECT_EQ(some->find("rng"), nullptr);
  ASSERT_NE(some->find("w0"), nullptr);
  EXPECT_EQ(some->find("w0")->data, all->find("w0")->data);
  ASSERT_NE(some->find("step"), nullptr);
  EXPECT_EQ(some->find("step")->data, all->find("step")->data);
}

TEST(CkptLoad, NothingToLoadIsNotFound) {
  TempDir dir;
  EXPECT_EQ(load_latest(dir.path(), {}).status().code(), Code::kNotFound);
}

}  // namespace
}  // namespace kiln::ckpt
