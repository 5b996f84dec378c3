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

TEST(BucketPlan, AFullBucketClosesAtAShortGapASmallOneOnlyAtALongGap) {
  // Ready at 0, 0, 5, 10, 10, 40 ms; short gap 2 ms once a bucket holds 4
  // bytes, long gap 20 ms for any bucket. The first cap (100) is never hit.
  const std::vector<std::size_t> bytes{1, 1, 4, 4, 1, 1};
  const std::vector<double> ready{0, 0, 5e-3, 10e-3, 10e-3, 40e-3};
  const GapRule rule{20e-3, 2e-3, 4};
  const auto breaks = breaks_at_gaps(bytes, ready, 100, 100, rule);
  // [1, 1] waits 5 ms for 4 (too small to go alone), [1, 1, 4] is full and
  // closes at the 5 ms gap, [4, 1] is full but its next gap is the long one.
  EXPECT_EQ(breaks, (std::vector<bool>{false, false, false, true, false, true}));
  EXPECT_EQ(plan_buckets(bytes, 100, 100, breaks), (Buckets{{0, 1, 2}, {3, 4}, {5}}));
}

TEST(BucketPlan, GapBreaksFollowTheCapsBucketsSoTheyReplayTheSame) {
  // The cap (8) closes [4, 4] before the third gradient; the short-gap test
  // is then asked of the new bucket [4], which is not full (6).
  const std::vector<std::size_t> bytes{4, 4, 4, 4};
  const std::vector<double> ready{0, 1e-3, 10e-3, 20e-3};
  const auto breaks = breaks_at_gaps(bytes, ready, 8, 8, GapRule{1.0, 2e-3, 6});
  EXPECT_EQ(breaks, (std::vector<bool>{false, false, false, false}));
  EXPECT_EQ(plan_buckets(bytes, 8, 8, breaks), (Buckets{{0, 1}, {2, 3}}));
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
