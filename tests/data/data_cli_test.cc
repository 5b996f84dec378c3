// The `kiln data inspect` and `kiln data push` commands, run as the real
// binary: summaries, --verify naming a corrupt shard (exit 3), and a push to
// s3rver that a reader then inspects and verifies through s3://.
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

#include "kiln/base/fd.h"
#include "kiln/base/file.h"
#include "kiln/data/testing/test_dataset.h"
#include "kiln/objstore/s3/s3_object_store.h"
#include "kiln/objstore/s3/testing/s3rver_test.h"

extern char** environ;

namespace kiln::data {
namespace {

using testing::ScratchDir;

struct KilnRun {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

// Runs `kiln ARGS...` with `extra_env` added; bounded by the ctest timeout.
KilnRun kiln(const std::vector<std::string>& args, const std::vector<std::string>& extra_env,
             const std::string& scratch) {
  std::vector<std::string> argv_s = {KILN_BINARY};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_s;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "AWS_", 4) != 0) env_s.emplace_back(*e);
  }
  env_s.insert(env_s.end(), extra_env.begin(), extra_env.end());
  std::vector<char*> envp;
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);
  const std::string out = scratch + "/kiln.out";
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  pid_t pid = -1;
  KilnRun r;
  if (::posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), envp.data()) != 0) return r;
  posix_spawn_file_actions_destroy(&fa);
  int status = 0;
  ::waitpid(pid, &status, 0);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  auto text = read_file(out);
  r.output = text.is_ok() ? *text : "";
  return r;
}

// A local test dataset, on top of `Base`'s setup (an s3rver for S3rverTest).
template <class Base>
class WithDataset : public Base {
 protected:
  void SetUp() override {
    Base::SetUp();
    if (this->IsSkipped() || this->HasFatalFailure()) return;
    index_ = testing::write_test_dataset(dir_.path() + "/ds", 300, 3000);
    ASSERT_GE(index_.shards.size(), 3u);
  }
  std::string ds() const { return dir_.path() + "/ds"; }
  ScratchDir dir_;
  DatasetIndex index_;
};
using DataCli = WithDataset<::testing::Test>;
using DataCliS3 = WithDataset<objstore::s3::testing::S3rverTest>;

TEST_F(DataCli, InspectSummarizesAndVerifyNamesTheCorruptShard) {
  KilnRun ok = kiln({"data", "inspect", ds(), "--verify"}, {}, dir_.path());
  ASSERT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_NE(ok.output.find("samples  300"), std::string::npos) << ok.output;
  EXPECT_NE(ok.output.find(fmt::format("shards   {} ", index_.shards.size())), std::string::npos)
      << ok.output;
  EXPECT_NE(ok.output.find("verified"), std::string::npos) << ok.output;

  // Flip one byte in the middle of shard 1.
  const std::string victim = ds() + "/" + index_.shards[1].file;
  Fd fd(::open(victim.c_str(), O_RDWR));
  ASSERT_TRUE(fd.valid());
  char b = 0;
  ASSERT_EQ(::pread(fd.get(), &b, 1, 100), 1);
  b ^= 0x01;
  ASSERT_EQ(::pwrite(fd.get(), &b, 1, 100), 1);
  KilnRun bad = kiln({"data", "inspect", ds(), "--verify"}, {}, dir_.path());
  EXPECT_EQ(bad.exit_code, 3) << bad.output;
  EXPECT_NE(bad.output.find(index_.shards[1].file), std::string::npos) << bad.output;
  EXPECT_EQ(bad.output.find(index_.shards[0].file), std::string::npos)
      << "only the bad shard is named: " << bad.output;

  KilnRun plain = kiln({"data", "inspect", ds()}, {}, dir_.path());
  EXPECT_EQ(plain.exit_code, 0) << "without --verify the index alone is read: " << plain.output;
}

TEST_F(DataCliS3, PushToS3ThenInspectAndVerifyThroughTheUrl) {
  const std::vector<std::string> env = {"AWS_ENDPOINT_URL=" + s3().endpoint(),
                                        "AWS_ACCESS_KEY_ID=S3RVER", "AWS_SECRET_ACCESS_KEY=S3RVER"};
  const std::string url = s3().url("sets/ds");
  KilnRun push = kiln({"data", "push", ds(), url}, env, dir_.path());
  ASSERT_EQ(push.exit_code, 0) << push.output;
  EXPECT_NE(push.output.find(fmt::format("pushed {} shards", index_.shards.size())),
            std::string::npos)
      << push.output;

  KilnRun inspect = kiln({"data", "inspect", url, "--verify"}, env, dir_.path());
  ASSERT_EQ(inspect.exit_code, 0) << inspect.output;
  EXPECT_NE(inspect.output.find("dataset  s3://kiln-test/sets/ds"), std::string::npos)
      << inspect.output;
  EXPECT_NE(inspect.output.find("verified"), std::string::npos) << inspect.output;

  // A missing shard on the remote is named too.
  auto store = open_store("sets/ds");
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->remove(index_.shards[2].file, Deadline::after_seconds(10)).is_ok());
  KilnRun missing = kiln({"data", "inspect", url, "--verify"}, env, dir_.path());
  EXPECT_EQ(missing.exit_code, 3) << missing.output;
  EXPECT_NE(missing.output.find(index_.shards[2].file + " (missing)"), std::string::npos)
      << missing.output;

  KilnRun no_creds =
      kiln({"data", "push", ds(), url}, {"AWS_ENDPOINT_URL=" + s3().endpoint()}, dir_.path());
  EXPECT_NE(no_creds.exit_code, 0);
  EXPECT_NE(no_creds.output.find("AWS_ACCESS_KEY_ID"), std::string::npos) << no_creds.output;
}

}  // namespace
}  // namespace kiln::data
