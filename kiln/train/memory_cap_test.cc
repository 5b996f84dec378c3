#include "kiln/train/memory_cap.h"

#include <gtest/gtest.h>

namespace kiln::train {
namespace {

constexpr std::uint64_t kMiB = 1 << 20;

CgroupMemory cgroup(std::optional<std::uint64_t> limit_mib, std::uint64_t usage_mib) {
  CgroupMemory m;
  m.version = 1;
  m.dir = "/sys/fs/cgroup/memory/job/rank2";
  if (limit_mib) m.limit_bytes = *limit_mib * kMiB;
  m.usage_bytes = usage_mib * kMiB;
  return m;
}

ParallelConfig from_cgroup(double reserve_mib, double configured_mib = 0) {
  ParallelConfig c;
  c.memory_cap_from_cgroup = true;
  c.memory_cgroup_reserve_mib = reserve_mib;
  c.memory_cap_mib = configured_mib;
  return c;
}

TEST(MemoryCap, TheConfiguredCapWhenTheCgroupIsNotAsked) {
  ParallelConfig c;
  c.memory_cap_mib = 97;
  auto cap = memory_cap(c, cgroup(50, 10));
  ASSERT_TRUE(cap.is_ok());
  EXPECT_EQ(cap->mib, 97);
  EXPECT_EQ(cap->source, "parallel.memory_cap_mib");
}

TEST(MemoryCap, TheCgroupsHeadroomLessTheReserve) {
  auto cap = memory_cap(from_cgroup(32), cgroup(400, 150));
  ASSERT_TRUE(cap.is_ok()) << cap.status().to_string();
  EXPECT_DOUBLE_EQ(cap->mib, 400 - 150 - 32);
  EXPECT_NE(cap->source.find("/sys/fs/cgroup/memory/job/rank2"), std::string::npos) << cap->source;
  EXPECT_NE(cap->source.find("limit 400.0 MiB"), std::string::npos) << cap->source;
}

TEST(MemoryCap, TheDefaultReserveIsATenthOfTheHeadroomAndAtLeast32MiB) {
  auto small = memory_cap(from_cgroup(-1), cgroup(200, 60));
  ASSERT_TRUE(small.is_ok()) << small.status().to_string();
  EXPECT_DOUBLE_EQ(small->mib, 200 - 60 - 32);
  auto large = memory_cap(from_cgroup(-1), cgroup(1084, 64));
  ASSERT_TRUE(large.is_ok());
  EXPECT_DOUBLE_EQ(large->mib, (1084 - 64) * 0.9);
}

TEST(MemoryCap, TheLowerOfTheConfiguredCapAndTheCgroups) {
  auto lower_configured = memory_cap(from_cgroup(32, 100), cgroup(400, 150));
  ASSERT_TRUE(lower_configured.is_ok());
  EXPECT_EQ(lower_configured->mib, 100);
  EXPECT_EQ(lower_configured->source, "parallel.memory_cap_mib");
  auto lower_cgroup = memory_cap(from_cgroup(32, 500), cgroup(400, 150));
  ASSERT_TRUE(lower_cgroup.is_ok());
  EXPECT_DOUBLE_EQ(lower_cgroup->mib, 218);
}

TEST(MemoryCap, NoCgroupOrNoLimitIsAnErrorNamingIt) {
  auto none = memory_cap(from_cgroup(32), std::nullopt);
  EXPECT_EQ(none.status().code(), Code::kFailedPrecondition);
  EXPECT_NE(none.status().message().find("no memory cgroup"), std::string::npos);
  auto unlimited = memory_cap(from_cgroup(32), cgroup(std::nullopt, 150));
  EXPECT_EQ(unlimited.status().code(), Code::kFailedPrecondition);
  EXPECT_NE(unlimited.status().message().find("/sys/fs/cgroup/memory/job/rank2 has no limit"),
            std::string::npos)
      << unlimited.status().message();
}

TEST(MemoryCap, NoHeadroomBeyondTheReserveIsOutOfMemory) {
  auto cap = memory_cap(from_cgroup(32), cgroup(180, 150));
  EXPECT_EQ(cap.status().code(), Code::kResourceExhausted);
  EXPECT_NE(cap.status().message().find("limit of 180.0 MiB and 150.0 MiB in use"), std::string::npos)
      << cap.status().message();
}

}  // namespace
}  // namespace kiln::train
