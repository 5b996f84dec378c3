#include "kiln/base/cgroup_memory.h"

#include <gtest/gtest.h>

#include <fstream>

#include "kiln/base/testing/temp_dir.h"

namespace kiln {
namespace {

TEST(MemoryCgroupOf, PrefersTheV1MemoryControllerOverTheUnifiedLine) {
  const auto place = memory_cgroup_of(
      "9:name=systemd:/\n4:memory:/process_api/f560\n3:cpuset:/\n0::/\n");
  ASSERT_TRUE(place);
  EXPECT_EQ(place->version, 1);
  EXPECT_EQ(place->path, "/process_api/f560");
}

TEST(MemoryCgroupOf, FindsTheUnifiedHierarchyAndControllersListedTogether) {
  const auto v2 = memory_cgroup_of("0::/system.slice/slurmstepd.scope/job_17/step_0\n");
  ASSERT_TRUE(v2);
  EXPECT_EQ(v2->version, 2);
  EXPECT_EQ(v2->path, "/system.slice/slurmstepd.scope/job_17/step_0");
  const auto joint = memory_cgroup_of("5:cpu,memory,cpuacct:/a:b\n");
  ASSERT_TRUE(joint);
  EXPECT_EQ(joint->version, 1);
  EXPECT_EQ(joint->path, "/a:b");  // a ':' inside the path is the path's
  EXPECT_FALSE(memory_cgroup_of("3:cpuset:/\n1:name=systemd:/x\n"));
}

constexpr const char* kMountinfo =
    "30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
    "34 30 0:31 /docker/abc /sys/fs/cgroup/memory rw,relatime master:9 - cgroup cgroup rw,memory\n"
    "40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";

TEST(CgroupDir, MapsThePathThroughTheMountsRoot) {
  // A container sees its own cgroup as the mount's root.
  EXPECT_EQ(cgroup_dir(kMountinfo, {1, "/docker/abc"})->dir, "/sys/fs/cgroup/memory");
  const auto rank3 = cgroup_dir(kMountinfo, {1, "/docker/abc/rank3"});
  ASSERT_TRUE(rank3);
  EXPECT_EQ(rank3->dir, "/sys/fs/cgroup/memory/rank3");
  EXPECT_EQ(rank3->mount_point, "/sys/fs/cgroup/memory");
  EXPECT_FALSE(cgroup_dir(kMountinfo, {1, "/docker/abcd"}));  // not below the root
  EXPECT_FALSE(cgroup_dir(kMountinfo, {1, "/other"}));
  EXPECT_EQ(cgroup_dir(kMountinfo, {2, "/user.slice/x"})->dir, "/sys/fs/cgroup/unified/user.slice/x");
  EXPECT_EQ(cgroup_dir(kMountinfo, {2, "/"})->dir, "/sys/fs/cgroup/unified");
  EXPECT_FALSE(cgroup_dir("31 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n", {1, "/"}));
}

void put(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

TEST(ReadCgroupMemory, ReadsV1AndItsUnlimitedSentinel) {
  testing::TempDir dir;
  put(dir.path() + "/memory.limit_in_bytes", "104857600\n");
  put(dir.path() + "/memory.usage_in_bytes", "4096\n");
  put(dir.path() + "/memory.max_usage_in_bytes", "8192\n");
  auto m = read_cgroup_memory(1, dir.path());
  ASSERT_TRUE(m.is_ok()) << m.status().message();
  EXPECT_EQ(m->limit_bytes, 104857600u);
  EXPECT_EQ(m->usage_bytes, 4096u);
  EXPECT_EQ(m->peak_bytes, 8192u);
  put(dir.path() + "/memory.limit_in_bytes", "9223372036854771712\n");
  m = read_cgroup_memory(1, dir.path());
  ASSERT_TRUE(m.is_ok());
  EXPECT_FALSE(m->limit_bytes);
}

TEST(ReadCgroupMemory, ReadsV2WithAndWithoutALimitOrAPeak) {
  testing::TempDir dir;
  put(dir.path() + "/memory.max", "max\n");
  put(dir.path() + "/memory.current", "12345\n");
  auto m = read_cgroup_memory(2, dir.path());
  ASSERT_TRUE(m.is_ok()) << m.status().message();
  EXPECT_FALSE(m->limit_bytes);
  EXPECT_FALSE(m->peak_bytes);  // memory.peak is Linux 5.19+
  put(dir.path() + "/memory.max", "268435456\n");
  put(dir.path() + "/memory.peak", "200000\n");
  m = read_cgroup_memory(2, dir.path());
  ASSERT_TRUE(m.is_ok());
  EXPECT_EQ(m->limit_bytes, 268435456u);
  EXPECT_EQ(m->peak_bytes, 200000u);
}

TEST(ReadCgroupMemory, NamesAMalformedOrMissingFile) {
  testing::TempDir dir;
  put(dir.path() + "/memory.max", "lots\n");
  put(dir.path() + "/memory.current", "1\n");
  auto m = read_cgroup_memory(2, dir.path());
  EXPECT_EQ(m.status().code(), Code::kInvalidArgument);
  EXPECT_NE(m.status().message().find(dir.path() + "/memory.max"), std::string::npos)
      << m.status().message();
  EXPECT_NE(m.status().message().find("\"lots\""), std::string::npos);
  m = read_cgroup_memory(1, dir.path());
  EXPECT_EQ(m.status().code(), Code::kNotFound);
  EXPECT_NE(m.status().message().find("memory.limit_in_bytes"), std::string::npos);
}

TEST(OwnCgroupMemory, ReadsThisProcesssCgroupWithoutError) {
  // Whatever this host has (v1, v2, or no memory controller at all), reading
  // it must not fail; where there is one, usage counts this process at least.
  auto own = own_cgroup_memory();
  ASSERT_TRUE(own.is_ok()) << own.status().message();
  if (*own) {
    EXPECT_GT((*own)->usage_bytes, 0u);
  }
}

}  // namespace
}  // namespace kiln
