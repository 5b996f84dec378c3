#include "kiln/ddp/bucket_plan.h"

#include <gtest/gtest.h>

namespace kiln::ddp {
namespace {

using Buckets = std::vector<std::vector<std::size_t>>;

TEST(BucketPlan, SmallFirstBucketThenCappedOnes) {
  // First cap 10, then 25: [4,4] | [8,8,8] | [20] | [30 alone: over the cap]
  EXPECT_EQ(plan_buckets({4, 4, 8, 8, 8, 20, 30}, 10, 25),
            (Buckets{{0, 1}, {2, 3, 4}, {5}, {6}}));
}

TEST(BucketPlan, MeasuredGapsCloseABucketEarly) {
  // [4] | [8, 1 -- gap before 1] -> [8] | [1, 8]
  EXPECT_EQ(plan_buckets({4, 8, 1, 8}, 5, 25, {false, false, true, false}),
            (Buckets{{0}, {1}, {2, 3}}));
}

TEST(BucketPlan, EmptyAndSingle) {
  EXPECT_TRUE(plan_buckets({}, 1, 1).empty());
  EXPECT_EQ(plan_buckets({100}, 1, 1), (Buckets{{0}}));
}

TEST(BucketPlan, EveryParameterExactlyOnceInOrder) {
  std::vector<std::size_t> sizes;
  for (int i = 0; i < 100; ++i) sizes.push_back(1 + (i * 37) % 50);
  auto b = plan_buckets(sizes, 64, 256);
  std::size_t next = 0;
  for (const auto& bucket : b) {
    for (std::size_t i : bucket) EXPECT_EQ(i, next++);
  }
  EXPECT_EQ(next, sizes.size());
}

}  // namespace
}  // namespace kiln::ddp
