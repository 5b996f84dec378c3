// ServerProcess: the child gets the environment overrides, its output lands
// in the log, and its exit is reported with the status and the log's tail.
#include "kiln/base/server_process.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "kiln/base/deadline.h"

namespace kiln {
namespace {

TEST(ServerProcess, ExitIsReportedWithStatusAndLogAndEnvOverridesApply) {
  auto dir = make_scratch_dir("kiln_server_process_");
  ASSERT_TRUE(dir.is_ok()) << dir.status().to_string();
  ServerProcess p("sh", *dir + "/log");
  ::setenv("KILN_SP_INHERITED", "kept", 1);
  ::setenv("KILN_SP_REPLACED", "old", 1);
  ASSERT_TRUE(
      p.spawn({find_on_path("sh"), "-c", "echo \"$KILN_SP_INHERITED $KILN_SP_REPLACED\"; exit 3"},
              {"KILN_SP_REPLACED=new"})
          .is_ok());
  EXPECT_TRUE(p.running());
  Deadline deadline = Deadline::after_seconds(10);
  Status s;
  while ((s = p.check_running()).is_ok() && !deadline.expired()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_FALSE(s.is_ok()) << "sh did not exit within 10 s";
  EXPECT_EQ(s.code(), Code::kUnavailable);
  EXPECT_NE(s.message().find("status 3"), std::string::npos) << s.to_string();
  EXPECT_NE(s.message().find("kept new"), std::string::npos) << s.to_string();
  EXPECT_FALSE(p.running());
  std::filesystem::remove_all(*dir);
}

TEST(ServerProcess, AMalformedEnvironmentEntryIsRefused) {
  ServerProcess p("sh", "/dev/null");
  Status s = p.spawn({find_on_path("sh"), "-c", "true"}, {"NO_EQUALS_SIGN"});
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("NO_EQUALS_SIGN"), std::string::npos) << s.to_string();
  EXPECT_FALSE(p.running());
}

TEST(ServerProcess, KillEndsAServerThatWouldRunForever) {
  ServerProcess p("sleep", "/dev/null");
  ASSERT_TRUE(p.spawn({find_on_path("sleep"), "1000"}).is_ok());
  ASSERT_TRUE(p.check_running().is_ok());
  p.kill();
  EXPECT_FALSE(p.running());
  EXPECT_FALSE(p.check_running().is_ok());
}

}  // namespace
}  // namespace kiln
