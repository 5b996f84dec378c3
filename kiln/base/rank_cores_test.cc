#include "kiln/base/rank_cores.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace kiln {
namespace {

// The calling thread's mask, in order: a thread bound to one of the
// process's CPUs sees that CPU alone.
TEST(AllowedCpus, AreTheCallingThreadsMaskInOrder) {
  const std::vector<int> all = allowed_cpus();
  ASSERT_FALSE(all.empty());
  EXPECT_TRUE(std::is_sorted(all.begin(), all.end()));
  std::vector<int> seen;
  std::thread bound([&] {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(all.back(), &one);
    ASSERT_EQ(::pthread_setaffinity_np(::pthread_self(), sizeof one, &one), 0);
    seen = allowed_cpus();
  });
  bound.join();
  EXPECT_EQ(seen, std::vector<int>{all.back()});
  EXPECT_EQ(allowed_cpus(), all) << "binding another thread left this one's mask alone";
}

// Note [A rank's share of the cores]: the lone rank the launcher bound to one
// core of two ran two threads on it.
TEST(IntraOpThreads, ARankBoundToOneCoreRunsOneThread) {
  EXPECT_EQ(intra_op_threads(/*usable_cpus=*/1, /*online_cpus=*/2, /*local_ranks=*/1), 1);
  EXPECT_EQ(intra_op_threads(1, 2, 2), 1);
  EXPECT_EQ(intra_op_threads(1, 64, 1), 1);  // `taskset -c 3 kiln train ...`
}

TEST(IntraOpThreads, ARankGivenEveryCoreRunsOneThreadPerCore) {
  EXPECT_EQ(intra_op_threads(2, 2, 1), 2);
  EXPECT_EQ(intra_op_threads(8, 8, 1), 8);
}

TEST(IntraOpThreads, RanksSharingOneMaskSplitItAndNeverGetLessThanOne) {
  EXPECT_EQ(intra_op_threads(8, 8, 2), 4);   // `--bind none`
  EXPECT_EQ(intra_op_threads(8, 8, 3), 2);   // a remainder core is left to the comm threads
  EXPECT_EQ(intra_op_threads(2, 2, 8), 1);   // oversubscribed: 8 ranks on 2 cores
  EXPECT_EQ(intra_op_threads(4, 8, 2), 4);   // a block of 4 cores of 8 for each of 2 ranks
  EXPECT_EQ(intra_op_threads(0, 0, 0), 1);   // nothing known: one thread
}

TEST(CoresOfRank, ALoneRankIsGivenEveryCore) {
  EXPECT_EQ(cores_of_rank({0, 1}, 0, 1), (std::vector<int>{0, 1}));
}

TEST(CoresOfRank, RanksNoMoreThanCoresGetEqualBlocksInOrder) {
  EXPECT_EQ(cores_of_rank({0, 1}, 0, 2), (std::vector<int>{0}));
  EXPECT_EQ(cores_of_rank({0, 1}, 1, 2), (std::vector<int>{1}));
  const std::vector<int> allowed = {2, 3, 4, 5, 6, 7, 8};  // the launcher's own mask
  EXPECT_EQ(cores_of_rank(allowed, 0, 3), (std::vector<int>{2, 3}));
  EXPECT_EQ(cores_of_rank(allowed, 2, 3), (std::vector<int>{6, 7}));  // 8 is left over
}

TEST(CoresOfRank, MoreRanksThanCoresTakeOneCoreEachInTurn) {
  EXPECT_EQ(cores_of_rank({0, 1}, 2, 4), (std::vector<int>{0}));
  EXPECT_EQ(cores_of_rank({0, 1}, 3, 4), (std::vector<int>{1}));
  EXPECT_TRUE(cores_of_rank({}, 0, 1).empty());
}

}  // namespace
}  // namespace kiln
