#include "kiln/serve/thread_cpus.h"

#include <gtest/gtest.h>

namespace kiln::serve {
namespace {

TEST(SplitCpus, TheWorkerGetsTheLastCpuAndTheFrontTheRest) {
  const ThreadCpus two = split_cpus({0, 1});
  EXPECT_EQ(two.front, std::vector<int>{0});
  EXPECT_EQ(two.batch, std::vector<int>{1});
  const ThreadCpus four = split_cpus({2, 3, 5, 7});
  EXPECT_EQ(four.front, (std::vector<int>{2, 3, 5}));
  EXPECT_EQ(four.batch, std::vector<int>{7});
}

TEST(SplitCpus, NothingIsPinnedOnOneCpu) {
  for (const auto& allowed : {std::vector<int>{}, std::vector<int>{3}}) {
    const ThreadCpus c = split_cpus(allowed);
    EXPECT_TRUE(c.front.empty());
    EXPECT_TRUE(c.batch.empty());
  }
}

}  // namespace
}  // namespace kiln::serve
