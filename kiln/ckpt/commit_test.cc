// The commit protocol under injected filesystem faults (FaultFs): wherever a
// save fails, it fails with a Status naming the operation and path, the
// newest committed step still loads, `latest` names a loadable step, and the
// next save succeeds.
#include "kiln/ckpt/commit.h"

#include <gtest/gtest.h>

#include <cctype>
#include <cerrno>

#include "kiln/base/file.h"
#include "kiln/base/fs.h"
#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/load.h"
#include "kiln/ckpt/testing/fault_fs.h"
#include "kiln/ckpt/testing/test_state.h"
#include "kiln/ckpt/verify.h"

namespace kiln::ckpt {
namespace {

using testing::check_loaded;
using testing::FaultFs;
using testing::FsOp;
using testing::TempDir;
using testing::TestState;

struct Fault {
  const char* what;
  FsOp op;
  std::string path_part;  // "" = the root itself (matched by path suffix below)
  int err;
  int skip;
  bool may_commit;  // the fault comes after the rename that commits step 2
};

class CkptCommitFaults : public ::testing::TestWithParam<Fault> {};

TEST_P(CkptCommitFaults, FailsCleanlyAndRecovers) {
  const Fault& f = GetParam();
  TempDir dir;
  FaultFs fs(Fs::posix());
  auto ck = Checkpointer::create({.root = dir.path(), .fs = &fs});
  ASSERT_TRUE(ck.is_ok());
  TestState s1(1, 0, 1), s2(2, 0, 1), s3(3, 0, 1);
  ASSERT_TRUE((*ck)->save(s1.view(), 1, Deadline::after_seconds(10)).is_ok());

  fs.fail(f.op, f.path_part.empty() ? dir.path() : f.path_part, f.err, f.skip);
  Status st = (*ck)->save(s2.view(), 2, Deadline::after_seconds(10));
  ASSERT_EQ(fs.injected(), 1) << f.what;
  ASSERT_FALSE(st.is_ok()) << f.what;
  EXPECT_NE(st.message().find("(injected)"), std::string::npos) << st.to_string();
  if (f.err == ENOSPC) {
    EXPECT_EQ(st.code(), Code::kResourceExhausted) << st.to_string();
  }

  auto steps = list_committed_steps(dir.path());
  ASSERT_TRUE(steps.is_ok());
  if (!f.may_commit) {
    EXPECT_EQ(*steps, (std::vector<std::int64_t>{1})) << f.what;
    EXPECT_FALSE(path_exists(dir.path() + "/step-2.tmp")) << f.what;
  }
  auto loaded = load_latest(dir.path(), {});
  ASSERT_TRUE(loaded.is_ok()) << f.what << ": " << loaded.status().to_string();
  EXPECT_EQ(check_loaded(*loaded, steps->front(), 0, 1), "") << f.what;
  auto latest = read_latest(dir.path());
  ASSERT_TRUE(latest.is_ok()) << f.what;
  EXPECT_TRUE(verify_step_status(dir.path() + "/" + *latest).is_ok()) << f.what;

  ASSERT_TRUE((*ck)->save(s3.view(), 3, Deadline::after_seconds(10)).is_ok()) << f.what;
  EXPECT_EQ(*read_latest(dir.path()), "step-3");
}

INSTANTIATE_TEST_SUITE_P(
    EveryStep, CkptCommitFaults,
    ::testing::Values(
        Fault{"mkdir of the temp step", FsOp::kMakeDir, "step-2.tmp", EACCES, 0, false},
        Fault{"create shard (disk full)", FsOp::kCreate, "shard-", ENOSPC, 0, false},
        Fault{"write shard", FsOp::kAppend, "shard-", EIO, 0, false},
        Fault{"fsync shard", FsOp::kSync, "shard-", EIO, 0, false},
        Fault{"write manifest (disk full)", FsOp::kAppend, "manifest.json", ENOSPC, 0, false},
        Fault{"fsync manifest", FsOp::kSync, "manifest.json", EIO, 0, false},
        Fault{"fsync temp step dir", FsOp::kSyncDir, "step-2.tmp", EIO, 0, false},
        Fault{"rename (the commit)", FsOp::kRename, "step-2.tmp", EXDEV, 0, false},
        // After the rename: step 2 is committed; the save still reports the failure.
        Fault{"fsync root after rename", FsOp::kSyncDir, "", EIO, 1, true},
        Fault{"write latest.tmp", FsOp::kCreate, "latest.tmp", ENOSPC, 0, true},
        Fault{"rename latest", FsOp::kRename, "latest.tmp", EIO, 0, true}),
    [](const auto& info) {
      std::string n;
      for (const char* p = info.param.what; *p; ++p) n += std::isalnum(*p) ? *p : '_';
      return n;
    });

}  // namespace
}  // namespace kiln::ckpt
