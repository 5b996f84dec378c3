#include "kiln/comm/transport/tcp/idle_cores.h"

#include <gtest/gtest.h>
#include <sched.h>
#include <unistd.h>

#include <thread>

namespace kiln::comm::transport::tcp {
namespace {

// Note [Idle cores this process may use]: a thread bound to one CPU counts
// that CPU alone, whatever the rest of the host does.
TEST(IdleCores, AThreadBoundToOneCpuCountsThatCpuAlone) {
  cpu_set_t allowed;
  ASSERT_EQ(::sched_getaffinity(0, sizeof(allowed), &allowed), 0);
  const CpuTicks all = allowed_cpu_ticks();
  EXPECT_EQ(all.cores, CPU_COUNT(&allowed));
  EXPECT_GE(all.total, all.idle);

  int first = 0;
  while (!CPU_ISSET(first, &allowed)) ++first;
  CpuTicks bound;
  std::thread t([&] {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    ASSERT_EQ(::sched_setaffinity(0, sizeof(one), &one), 0);
    bound = allowed_cpu_ticks();
  });
  t.join();
  EXPECT_EQ(bound.cores, 1);
  EXPECT_GT(bound.total, 0u);
  if (all.cores > 1) {
    EXPECT_LT(bound.total, all.total);
  }
}

TEST(IdleCores, NeverMoreIdleCoresThanTheThreadMayUse) {
  cpu_set_t allowed;
  ASSERT_EQ(::sched_getaffinity(0, sizeof(allowed), &allowed), 0);
  const double idle = idle_cores_recently();
  EXPECT_GE(idle, 0.0);
  EXPECT_LE(idle, CPU_COUNT(&allowed));
}

}  // namespace
}  // namespace kiln::comm::transport::tcp
