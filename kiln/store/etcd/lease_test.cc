// EtcdLease on a real etcd: keys put with a lease live while it is kept
// alive and vanish a TTL after the keep-alive stops (the holder died), at
// once on revoke.
#include "kiln/store/etcd/lease.h"

#include <gtest/gtest.h>

#include <thread>

#include "kiln/store/etcd/etcd_store.h"
#include "kiln/store/etcd/testing/etcd_server.h"

namespace kiln::store::etcd {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using testing::EtcdServer;

// How often the tests look at a key while they wait for it to vanish.
constexpr auto kPoll = milliseconds(20);

class EtcdLeaseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!EtcdServer::installed()) GTEST_SKIP() << EtcdServer::kNotInstalled;
    auto server = EtcdServer::start();
    ASSERT_TRUE(server.is_ok()) << server.status().to_string();
    etcd_ = std::move(server).value();
    auto store = EtcdStore::open(
        {.endpoints = {etcd_->endpoint()}, .prefix = "/kiln/job/", .default_timeout = seconds(10)});
    ASSERT_TRUE(store.is_ok()) << store.status().to_string();
    store_ = std::move(store).value();
  }
  bool present(const std::string& key) {
    auto r = store_->check(std::vector<std::string>{key});
    EXPECT_TRUE(r.is_ok()) << r.status().to_string();
    return r.is_ok() && *r;
  }
  std::unique_ptr<EtcdLease> grant(seconds ttl) {
    auto lease = store_->grant_lease(ttl, Deadline::after(seconds(5)));
    EXPECT_TRUE(lease.is_ok()) << lease.status().to_string();
    return lease.is_ok() ? std::move(lease).value() : nullptr;
  }
  std::unique_ptr<EtcdServer> etcd_;
  std::unique_ptr<EtcdStore> store_;
};

TEST_F(EtcdLeaseTest, KeyOutlivesItsTtlWhileKeptAliveAndVanishesAfter) {
  auto lease = grant(seconds(1));
  ASSERT_NE(lease, nullptr);
  EXPECT_EQ(lease->ttl(), seconds(1));
  ASSERT_TRUE(store_->set("alive/node0", "1", *lease).is_ok());
  // Well past two TTLs, the keep-alive holds the key.
  auto until = Clock::now() + milliseconds(2500);
  while (Clock::now() < until) {
    ASSERT_TRUE(present("alive/node0")) << lease->status().to_string();
    std::this_thread::sleep_for(milliseconds(100));
  }
  EXPECT_TRUE(lease->status().is_ok()) << lease->status().to_string();
  EXPECT_GT(lease->last_refresh(), until - milliseconds(1000));

  // The holder "dies": etcd drops the key about a TTL later (it checks for
  // expired leases every 500 ms).
  lease->stop_keepalive();
  auto stopped = Clock::now();
  Deadline deadline = Deadline::after(seconds(5));
  while (present("alive/node0") && !deadline.expired()) std::this_thread::sleep_for(kPoll);
  auto took = Clock::now() - stopped;
  EXPECT_FALSE(present("alive/node0"));
  EXPECT_GE(took, milliseconds(300));  // not at once: the last keep-alive gave it a TTL
  EXPECT_LE(took, milliseconds(2500));
}

TEST_F(EtcdLeaseTest, RevokeRemovesTheKeysAtOnce) {
  auto lease = grant(seconds(30));
  ASSERT_NE(lease, nullptr);
  ASSERT_TRUE(store_->set("alive/a", "1", *lease).is_ok());
  ASSERT_TRUE(store_->set("alive/b", "1", *lease).is_ok());
  ASSERT_TRUE(store_->set("plain", "1").is_ok());
  Status s = lease->revoke(Deadline::after(seconds(5)));
  ASSERT_TRUE(s.is_ok()) << s.to_string();
  EXPECT_FALSE(present("alive/a"));
  EXPECT_FALSE(present("alive/b"));
  EXPECT_TRUE(present("plain"));
  // A put with a dead lease is refused, naming it.
  Status late = store_->set("alive/c", "1", *lease);
  EXPECT_EQ(late.code(), Code::kNotFound) << late.to_string();
  EXPECT_NE(late.message().find("store set 'alive/c'"), std::string::npos) << late.message();
  EXPECT_EQ(lease->revoke(Deadline::after(seconds(5))).code(), Code::kNotFound);
}

TEST_F(EtcdLeaseTest, KeepaliveReportsALeaseRevokedElsewhere) {
  auto lease = grant(seconds(1));
  ASSERT_NE(lease, nullptr);
  auto revoked = store_->client()->call("lease/revoke", {{"ID", std::to_string(lease->id())}},
                                        Deadline::after(seconds(5)), Retry::kAlways);
  ASSERT_TRUE(revoked.is_ok()) << revoked.status().to_string();
  Deadline deadline = Deadline::after(seconds(3));
  while (lease->status().is_ok() && !deadline.expired()) std::this_thread::sleep_for(kPoll);
  EXPECT_EQ(lease->status().code(), Code::kNotFound) << lease->status().to_string();
  EXPECT_NE(lease->status().message().find(std::to_string(lease->id())), std::string::npos);
}

TEST_F(EtcdLeaseTest, GrantRejectsANonPositiveTtl) {
  auto lease = store_->grant_lease(seconds(0), Deadline::after(seconds(5)));
  EXPECT_EQ(lease.status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace kiln::store::etcd
