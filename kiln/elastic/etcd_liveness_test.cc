#include "kiln/elastic/etcd_liveness.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <thread>

#include "kiln/store/etcd/testing/etcd_server.h"

namespace kiln::elastic {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using store::etcd::testing::EtcdServer;

bool contains(const std::vector<std::string>& v, const std::string& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

// Polls observer.lost() until `pred` holds for it or the deadline passes.
template <typename Pred>
std::vector<std::string> lost_until(LivenessObserver& observer, Pred pred, Clock::duration limit) {
  Deadline deadline = Deadline::after(limit);
  std::vector<std::string> lost;
  while (!deadline.expired()) {
    auto r = observer.lost();
    if (r.is_ok()) {
      lost = *r;
      if (pred(lost)) break;
    }
    std::this_thread::sleep_for(milliseconds(20));
  }
  return lost;
}

class LeaseLiveness : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!EtcdServer::installed()) GTEST_SKIP() << EtcdServer::kNotInstalled;
    auto etcd = EtcdServer::start();
    ASSERT_TRUE(etcd.is_ok()) << etcd.status().to_string();
    etcd_ = std::move(*etcd);
    auto store = store::etcd::EtcdStore::open(
        {.endpoints = {etcd_->endpoint()}, .prefix = "/liveness/", .default_timeout = seconds(2)});
    ASSERT_TRUE(store.is_ok()) << store.status().to_string();
    store_ = std::move(*store);
  }
  std::unique_ptr<EtcdServer> etcd_;
  std::shared_ptr<store::etcd::EtcdStore> store_;
};

TEST_F(LeaseLiveness, APublishingNodeIsAliveOneThatNeverPublishedIsLostAfterTheTtl) {
  LivenessBackend backend = lease_liveness(store_, seconds(1));
  auto a = backend.publish("a");
  ASSERT_TRUE(a.is_ok()) << a.status().to_string();
  auto observer = backend.observe();
  auto start = Clock::now();
  observer->watch({"a", "b"});
  auto first = observer->lost();
  ASSERT_TRUE(first.is_ok());
  EXPECT_TRUE(first->empty()) << "b gets a TTL of grace to publish";
  auto lost = lost_until(
      *observer, [](const auto& l) { return !l.empty(); }, seconds(10));
  EXPECT_EQ(lost, std::vector<std::string>{"b"});
  EXPECT_GE(Clock::now() - start, seconds(1));
  EXPECT_FALSE(observer->all_alive_since(start)) << "b was never seen";
  // A key outlives its holder by up to a TTL: presence proves life only
  // a TTL (and etcd's expiry sweep) after the time asked about.
  auto only_a = backend.observe();
  only_a->watch({"a"});
  auto asked = Clock::now();
  ASSERT_TRUE(only_a->lost().is_ok());
  EXPECT_FALSE(only_a->all_alive_since(asked));
  Deadline deadline = Deadline::after(seconds(10));
  while (!only_a->all_alive_since(asked) && !deadline.expired()) {
    ASSERT_TRUE(only_a->lost().is_ok());
    std::this_thread::sleep_for(milliseconds(20));
  }
  EXPECT_TRUE(only_a->all_alive_since(asked));
  EXPECT_GE(Clock::now() - asked, seconds(2));
}

TEST_F(LeaseLiveness, ANodeWhosePublisherStoppedIsLost) {
  LivenessBackend backend = lease_liveness(store_, seconds(1));
  auto a = backend.publish("a");
  ASSERT_TRUE(a.is_ok()) << a.status().to_string();
  auto observer = backend.observe();
  observer->watch({"a"});
  ASSERT_TRUE(observer->lost()->empty());
  a->reset();  // the agent exits: its lease is revoked, the key goes
  auto lost = lost_until(
      *observer, [](const auto& l) { return contains(l, "a"); }, seconds(10));
  EXPECT_TRUE(contains(lost, "a"));
}

TEST_F(LeaseLiveness, ThePublisherRidesOutAnEtcdRestart) {
  LivenessBackend backend = lease_liveness(store_, seconds(2));
  auto a = backend.publish("a");
  ASSERT_TRUE(a.is_ok()) << a.status().to_string();
  ASSERT_TRUE(etcd_->restart().is_ok()) << etcd_->log_tail();
  auto restarted = Clock::now();
  Deadline deadline = Deadline::after(seconds(15));
  while ((*a)->last_success() <= restarted && !deadline.expired()) {
    std::this_thread::sleep_for(milliseconds(20));
  }
  EXPECT_GT((*a)->last_success(), restarted) << (*a)->last_error().to_string();
  auto observer = backend.observe();
  observer->watch({"a"});
  EXPECT_TRUE(observer->lost()->empty());
}

}  // namespace
}  // namespace kiln::elastic
