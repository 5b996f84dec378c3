// write_file_atomic (Note [Atomic replace]) under injected faults: whatever
// step fails, the old file stays whole and no temp file is left behind.
#include "kiln/base/fs.h"

#include <gtest/gtest.h>

#include <cerrno>

#include "kiln/base/file.h"
#include "kiln/base/testing/fault_fs.h"
#include "kiln/base/testing/temp_dir.h"

namespace kiln {
namespace {

using testing::FaultFs;
using testing::FsOp;

class AtomicWrite : public ::testing::Test {
 protected:
  std::string path() const { return dir_.path() + "/latest"; }
  std::vector<std::string> names() const { return list_dir(dir_.path()).value(); }

  testing::TempDir dir_;
  FaultFs fs_{Fs::posix()};
};

TEST_F(AtomicWrite, ReplacesTheFileAndLeavesNoTemp) {
  ASSERT_TRUE(write_file_atomic(fs_, path(), "old").is_ok());
  ASSERT_TRUE(write_file_atomic(fs_, path(), "new contents").is_ok());
  EXPECT_EQ(read_file(path()).value(), "new contents");
  EXPECT_EQ(names(), std::vector<std::string>{"latest"});
}

TEST_F(AtomicWrite, StreamedContents) {
  Status s = write_file_atomic(fs_, path(), [](FsWriter& w) -> Status {
    KILN_RETURN_IF_ERROR(w.append("ab", 2));
    return w.append("cd", 2);
  });
  ASSERT_TRUE(s.is_ok()) << s.to_string();
  EXPECT_EQ(read_file(path()).value(), "abcd");
}

// Each step of the protocol in turn fails; the old contents survive each.
TEST_F(AtomicWrite, AFailedStepKeepsTheOldFile) {
  ASSERT_TRUE(write_file_atomic(fs_, path(), "old").is_ok());
  struct Case {
    FsOp op;
    int err;
    Code code;
  };
  for (const Case& c :
       {Case{FsOp::kCreate, EACCES, Code::kFailedPrecondition},
        Case{FsOp::kAppend, ENOSPC, Code::kResourceExhausted},
        Case{FsOp::kSync, EIO, Code::kInternal}, Case{FsOp::kClose, EIO, Code::kInternal},
        Case{FsOp::kRename, EXDEV, Code::kInternal}}) {
    fs_.fail(c.op, "latest", c.err);
    Status s = write_file_atomic(fs_, path(), "new");
    EXPECT_EQ(s.code(), c.code) << s.to_string();
    EXPECT_NE(s.message().find("latest"), std::string::npos) << s.to_string();
    EXPECT_EQ(read_file(path()).value(), "old") << "op " << static_cast<int>(c.op);
    EXPECT_EQ(names(), std::vector<std::string>{"latest"}) << "op " << static_cast<int>(c.op);
  }
  EXPECT_EQ(fs_.injected(), 5);
}

// The directory fsync comes after the rename: the new file is in place
// although its durability was not confirmed, and the caller hears of it.
TEST_F(AtomicWrite, DirectoryFsyncFailureIsReported) {
  fs_.fail(FsOp::kSyncDir, dir_.path(), EIO);
  EXPECT_FALSE(write_file_atomic(fs_, path(), "new").is_ok());
  EXPECT_EQ(fs_.injected(), 1);
}

TEST_F(AtomicWrite, AtomicOnlySkipsTheFsyncs) {
  fs_.fail(FsOp::kSync, "latest", EIO);
  fs_.fail(FsOp::kSyncDir, dir_.path(), EIO);
  ASSERT_TRUE(write_file_atomic(fs_, path(), "x", Durability::kAtomicOnly).is_ok());
  EXPECT_EQ(fs_.injected(), 0);
  EXPECT_EQ(read_file(path()).value(), "x");
}

TEST(TempPath, UniquePerCallAndRecognised) {
  std::string a = temp_path_for("/d/f"), b = temp_path_for("/d/f");
  EXPECT_NE(a, b);
  EXPECT_TRUE(is_temp_name(a));
  EXPECT_FALSE(is_temp_name("/d/f"));
}

}  // namespace
}  // namespace kiln
