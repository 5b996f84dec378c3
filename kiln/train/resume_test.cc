// resume() across ranks: a rank that cannot load what the others can fails
// every rank at once, with an error naming it and the file.
#include "kiln/train/resume.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "kiln/base/fd.h"
#include "kiln/ckpt/checkpointer.h"
#include "kiln/ckpt/format.h"
#include "kiln/ckpt/testing/test_state.h"
#include "kiln/comm/testing/multiprocess.h"

namespace kiln::train {
namespace {

using ckpt::testing::TempDir;

// Flips the byte in the middle of `path`.
void flip_middle_byte(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(fd.valid()) << path;
  const off_t middle = ::lseek(fd.get(), 0, SEEK_END) / 2;
  char b = 0;
  ASSERT_EQ(::pread(fd.get(), &b, 1, middle), 1);
  b = static_cast<char>(b ^ 0x5a);
  ASSERT_EQ(::pwrite(fd.get(), &b, 1, middle), 1);
}

TEST(Resume, ARankThatCannotLoadTheStepFailsEveryRankNamingItAndTheFile) {
  TempDir tmp;
  const std::string good = tmp.path() + "/good", bad = tmp.path() + "/bad";
  {
    auto ck = ckpt::Checkpointer::create({.root = good});
    ASSERT_TRUE(ck.is_ok()) << ck.status().to_string();
    ckpt::testing::TestState state(4, 0, 1);
    ASSERT_TRUE((*ck)->save(state.view(), 4, Deadline::after_seconds(60)).is_ok());
  }
  // Rank 1 reads the step from a copy with a flipped byte in its shard (a
  // host whose copy went bad); rank 0, which picks the step, reads a good one.
  std::filesystem::copy(good, bad, std::filesystem::copy_options::recursive);
  const std::string corrupt = bad + "/step-4/" + ckpt::shard_file_name(0);
  flip_middle_byte(corrupt);

  auto result = comm::testing::run_ranks(2, [&](comm::Communicator& comm) -> Status {
    TrainConfig c;
    c.checkpoint.dir = comm.rank() == 1 ? bad : good;
    auto restore = [](const ckpt::LoadedState& s) -> Result<Progress> {
      return Progress{s.step, 0, 0};
    };
    auto r = resume(c, restore, /*whole=*/true, comm, nullptr, nullptr, /*use_memory=*/false);
    const std::string msg = r.is_ok() ? "" : r.status().to_string();
    if (r.is_ok() || r.status().code() != Code::kDataLoss ||
        msg.find("rank 1: ") == std::string::npos || msg.find(corrupt) == std::string::npos) {
      return internal_error(
          fmt::format("rank {}: want DataLoss naming rank 1 and {}, got '{}'", comm.rank(),
                      corrupt, r.is_ok() ? "ok" : msg));
    }
    return Status::ok();
  });
  EXPECT_TRUE(result.ok()) << result.report;
}

}  // namespace
}  // namespace kiln::train
