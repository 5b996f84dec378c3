#include "kiln/base/auth/job_token.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace kiln::auth {
namespace {

class JobTokenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("kiln-token-test-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir_);
    unsetenv(kJobTokenEnv);
  }
  void TearDown() override {
    std::filesystem::remove_all(dir_);
    unsetenv(kJobTokenEnv);
  }
  std::string write(const std::string& name, const std::string& text, mode_t mode) {
    auto p = (dir_ / name).string();
    std::ofstream(p) << text;
    chmod(p.c_str(), mode);
    return p;
  }
  std::filesystem::path dir_;
};

TEST_F(JobTokenTest, GeneratedTokensAreLongAndDistinct) {
  auto a = generate_token();
  auto b = generate_token();
  ASSERT_TRUE(a.is_ok() && b.is_ok());
  EXPECT_EQ(a->size(), 64u);
  EXPECT_NE(*a, *b);
}

TEST_F(JobTokenTest, ReadsAPrivateFileWithoutTheNewline) {
  auto t = read_token_file(write("t", "0123456789abcdef0123\n", 0600));
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  EXPECT_EQ(*t, "0123456789abcdef0123");
}

TEST_F(JobTokenTest, RefusesAWorldReadableFile) {
  auto t = read_token_file(write("t", "0123456789abcdef0123", 0644));
  EXPECT_EQ(t.status().code(), Code::kFailedPrecondition);
  EXPECT_NE(t.status().message().find("chmod 600"), std::string::npos);
}

TEST_F(JobTokenTest, RefusesShortAndOversizedTokens) {
  EXPECT_EQ(read_token_file(write("s", "short", 0600)).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(read_token_file(write("l", std::string(kMaxTokenBytes + 10, 'a'), 0600)).status().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(read_token_file((dir_ / "missing").string()).status().code(), Code::kNotFound);
}

TEST_F(JobTokenTest, EnvironmentTokenAndLauncherFallbacks) {
  auto none = token_from_env();
  ASSERT_TRUE(none.is_ok());
  EXPECT_EQ(*none, "");
  EXPECT_EQ(launcher_token("", false, "kiln run").status().code(), Code::kFailedPrecondition);
  auto generated = launcher_token("", true, "kiln run");
  ASSERT_TRUE(generated.is_ok());
  EXPECT_EQ(generated->size(), 64u);

  setenv(kJobTokenEnv, "0123456789abcdef0123", 1);
  EXPECT_EQ(*launcher_token("", false, "kiln run"), "0123456789abcdef0123");
  // --token-file wins over the environment.
  EXPECT_EQ(*launcher_token(write("t", "fedcba9876543210fedc", 0600), false, "kiln run"),
            "fedcba9876543210fedc");
  setenv(kJobTokenEnv, "tooshort", 1);
  EXPECT_EQ(token_from_env().status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace kiln::auth
