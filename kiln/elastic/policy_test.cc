#include "kiln/elastic/policy.h"

#include <gtest/gtest.h>

namespace kiln::elastic {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

Failure worker_exit(std::string node) {
  return Failure{FailureKind::kWorkerExit, std::move(node), 0, "exited with code 1"};
}

PolicyOptions options() {
  PolicyOptions o;
  o.max_restarts = 100;
  o.node_failure_limit = 3;
  o.node_failure_window = seconds(60);
  o.healthy_after = seconds(120);
  return o;
}

TEST(RecoveryPolicy, FirstWorkerExitIsTransientAndRestartsAfterAboutTheBase) {
  RecoveryPolicy policy(options());
  auto now = Clock::now();
  Decision d = policy.decide(worker_exit("a"), 0, now, now);
  EXPECT_EQ(d.failure_class, FailureClass::kTransient);
  EXPECT_EQ(d.action, Action::kRestartGroup);
  EXPECT_GE(d.delay, milliseconds(500));
  EXPECT_LE(d.delay, seconds(1));
}

TEST(RecoveryPolicy, BackoffGrowsAndStopsAtTheCap) {
  PolicyOptions o = options();
  o.node_failure_limit = 1000;
  RecoveryPolicy policy(o);
  auto now = Clock::now();
  Clock::duration largest{};
  for (int i = 0; i < 12; ++i) {
    Decision d = policy.decide(worker_exit("a"), i, now, now);
    ASSERT_EQ(d.action, Action::kRestartGroup);
    // Attempt i draws from [base/2, min(cap, base * 2^i)].
    auto upper = std::min<Clock::duration>(seconds(30), seconds(1) * (1 << i));
    EXPECT_LE(d.delay, upper) << "attempt " << i;
    largest = std::max(largest, d.delay);
  }
  EXPECT_GT(largest, seconds(4));  // it did grow
}

TEST(RecoveryPolicy, NodeFailingKTimesWithinTheWindowIsExcluded) {
  RecoveryPolicy policy(options());
  auto t0 = Clock::now();
  EXPECT_EQ(policy.decide(worker_exit("a"), 0, t0, t0).action, Action::kRestartGroup);
  EXPECT_EQ(policy.decide(worker_exit("b"), 1, t0, t0 + seconds(1)).action, Action::kRestartGroup);
  EXPECT_EQ(policy.decide(worker_exit("a"), 2, t0, t0 + seconds(2)).action, Action::kRestartGroup);
  Decision d = policy.decide(worker_exit("a"), 3, t0, t0 + seconds(3));
  EXPECT_EQ(d.failure_class, FailureClass::kPermanent);
  EXPECT_EQ(d.action, Action::kExcludeNode);
  EXPECT_NE(d.reason.find("node a failed 3 times"), std::string::npos) << d.reason;
}

TEST(RecoveryPolicy, FailuresOutsideTheWindowAreForgotten) {
  RecoveryPolicy policy(options());
  auto t0 = Clock::now();
  policy.decide(worker_exit("a"), 0, t0, t0);
  policy.decide(worker_exit("a"), 1, t0, t0 + seconds(1));
  Decision d = policy.decide(worker_exit("a"), 2, t0, t0 + seconds(90));
  EXPECT_EQ(d.action, Action::kRestartGroup);
}

TEST(RecoveryPolicy, LostNodeIsPermanentAndReformsAtOnce) {
  RecoveryPolicy policy(options());
  auto now = Clock::now();
  Decision d = policy.decide(Failure{FailureKind::kNodeLost, "b", -1, "no heartbeat"}, 0, now, now);
  EXPECT_EQ(d.failure_class, FailureClass::kPermanent);
  EXPECT_EQ(d.action, Action::kExcludeNode);
  EXPECT_EQ(d.delay, Clock::duration::zero());
}

TEST(RecoveryPolicy, GivesUpOnceMaxRestartsAreUsed) {
  PolicyOptions o = options();
  o.max_restarts = 2;
  RecoveryPolicy policy(o);
  auto now = Clock::now();
  EXPECT_EQ(policy.decide(worker_exit("a"), 1, now, now).action, Action::kRestartGroup);
  Decision d = policy.decide(worker_exit("b"), 2, now, now);
  EXPECT_EQ(d.action, Action::kGiveUp);
  EXPECT_NE(d.reason.find("--max-restarts 2"), std::string::npos) << d.reason;
}

TEST(RecoveryPolicy, AHealthyRunResetsTheBackoff) {
  PolicyOptions o = options();
  o.node_failure_limit = 1000;
  RecoveryPolicy policy(o);
  auto t0 = Clock::now();
  for (int i = 0; i < 8; ++i) policy.decide(worker_exit("a"), i, t0, t0);
  // This group ran longer than healthy_after before it failed.
  Decision d = policy.decide(worker_exit("a"), 8, t0, t0 + seconds(200));
  EXPECT_LE(d.delay, seconds(1));
}

}  // namespace
}  // namespace kiln::elastic

namespace kiln::elastic {
namespace {

TEST(RecoveryPolicy, CommErrorsRestartButDoNotCountAgainstTheNode) {
  PolicyOptions o;
  o.max_restarts = 100;
  o.node_failure_limit = 2;
  RecoveryPolicy policy(o);
  auto now = Clock::now();
  Failure comm{FailureKind::kCommError, "a", 0, "exited with code 4"};
  for (int i = 0; i < 5; ++i) {
    Decision d = policy.decide(comm, i, now, now);
    EXPECT_EQ(d.failure_class, FailureClass::kTransient);
    EXPECT_EQ(d.action, Action::kRestartGroup) << "attempt " << i;
  }
}

}  // namespace
}  // namespace kiln::elastic
