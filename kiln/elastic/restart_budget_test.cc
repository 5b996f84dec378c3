#include "kiln/elastic/restart_budget.h"

#include <gtest/gtest.h>

#include "kiln/store/memory_store.h"

namespace kiln::elastic {
namespace {

TEST(RestartBudget, AFreshJobHasUsedNothing) {
  RestartBudget budget(std::make_shared<store::MemoryStore>());
  auto n = budget.restarts_before(1);
  ASSERT_TRUE(n.is_ok()) << n.status().to_string();
  EXPECT_EQ(*n, 0);
}

TEST(RestartBudget, OneFailedRoundCountsOnceHoweverManyAgentsSawIt) {
  auto store = std::make_shared<store::MemoryStore>();
  RestartBudget a(store), b(store), c(store);
  ASSERT_TRUE(*a.restarts_before(1) == 0);
  // A worker killed on node a; nodes b and c see comm errors in the same round.
  EXPECT_TRUE(*a.record_failure(1, "a"));
  EXPECT_FALSE(*b.record_failure(1, "b"));
  EXPECT_FALSE(*c.record_failure(1, "c"));
  EXPECT_EQ(*b.restarts_before(2), 1);
  EXPECT_EQ(*a.restarts_before(2), 1);
  EXPECT_EQ(*c.restarts_before(2), 1);
}

TEST(RestartBudget, RoundsWithoutAFailureDoNotUseTheBudget) {
  auto store = std::make_shared<store::MemoryStore>();
  RestartBudget budget(store);
  // Round 1 re-forms for a scale-up, round 2 for a preemption: no failure
  // recorded. Round 3 fails, round 4 scales down, round 5 fails.
  EXPECT_EQ(*budget.restarts_before(2), 0);
  EXPECT_EQ(*budget.restarts_before(3), 0);
  ASSERT_TRUE(budget.record_failure(3, "a").is_ok());
  EXPECT_EQ(*budget.restarts_before(4), 1);
  EXPECT_EQ(*budget.restarts_before(5), 1);
  ASSERT_TRUE(budget.record_failure(5, "b").is_ok());
  EXPECT_EQ(*budget.restarts_before(6), 2);
}

TEST(RestartBudget, MembersAgreeEvenWhenTheRoundFailsBeforeSomeoneAsks) {
  auto store = std::make_shared<store::MemoryStore>();
  RestartBudget fast(store), slow(store);
  ASSERT_EQ(*fast.restarts_before(1), 0);
  // Round 1 fails before the slow member read its count: it still reads
  // round 1's count, not one that includes round 1's own failure.
  ASSERT_TRUE(*fast.record_failure(1, "fast"));
  EXPECT_EQ(*slow.restarts_before(1), 0);
  EXPECT_EQ(*slow.restarts_before(2), 1);
}

TEST(RestartBudget, ACorruptCountIsDataLossNamingTheKey) {
  auto store = std::make_shared<store::MemoryStore>();
  ASSERT_TRUE(store->set("g1/restarts", "lots").is_ok());
  auto n = RestartBudget(store).restarts_before(1);
  ASSERT_FALSE(n.is_ok());
  EXPECT_EQ(n.status().code(), Code::kDataLoss);
  EXPECT_NE(n.status().message().find("g1/restarts"), std::string::npos) << n.status().to_string();
}

}  // namespace
}  // namespace kiln::elastic
