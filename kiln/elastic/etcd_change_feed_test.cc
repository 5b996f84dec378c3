#include "kiln/elastic/etcd_change_feed.h"

#include <gtest/gtest.h>

#include <future>

#include "kiln/store/etcd/testing/etcd_server.h"

namespace kiln::elastic {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using store::etcd::testing::EtcdServer;

// Rendezvous over a real etcd, waking on its watch: with an hour between
// polls, only the watch (and the last call) can close these rounds in time.
TEST(EtcdChangeFeed, AgentsRendezvousOnTheWatchNotByPolling) {
  if (!EtcdServer::installed()) GTEST_SKIP() << EtcdServer::kNotInstalled;
  auto etcd = EtcdServer::start();
  ASSERT_TRUE(etcd.is_ok()) << etcd.status().to_string();
  auto open = [&] {
    auto s = store::etcd::EtcdStore::open({.endpoints = {(*etcd)->endpoint()},
                                           .prefix = "/kiln/rdzv/feed/",
                                           .default_timeout = seconds(5)});
    EXPECT_TRUE(s.is_ok()) << s.status().to_string();
    return std::shared_ptr<store::etcd::EtcdStore>(std::move(*s));
  };
  auto join = [&](std::string id, int min, int max) {
    return std::async(std::launch::async, [=, store = open()] {
      RendezvousOptions o{.self = {id, "10.0.0.1"},
                          .min_nodes = min,
                          .max_nodes = max,
                          .last_call = milliseconds(300),
                          .poll_interval = std::chrono::hours(1),
                          .changes = etcd_change_feed(store),
                          .feed_recheck = std::chrono::hours(1)};
      return Rendezvous(store, o).join(1, Deadline::after(seconds(30)));
    });
  };
  // Round 1: a waits for b (max 2 = full), woken by b's ticket.
  auto a = join("a", 2, 2);
  ASSERT_EQ(a.wait_for(milliseconds(300)), std::future_status::timeout);
  auto b = join("b", 2, 2);
  for (auto* f : {&a, &b}) {
    ASSERT_EQ(f->wait_for(seconds(20)), std::future_status::ready);
    auto r = f->get();
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
    EXPECT_EQ(r->num_nodes(), 2);
  }
}

TEST(EtcdChangeFeed, MarkIsUnavailableWithoutEtcd) {
  if (!EtcdServer::installed()) GTEST_SKIP() << EtcdServer::kNotInstalled;
  auto etcd = EtcdServer::start();
  ASSERT_TRUE(etcd.is_ok()) << etcd.status().to_string();
  auto store = store::etcd::EtcdStore::open({.endpoints = {(*etcd)->endpoint()},
                                             .prefix = "/kiln/rdzv/gone/",
                                             .default_timeout = milliseconds(500)});
  ASSERT_TRUE(store.is_ok());
  auto feed = etcd_change_feed(std::shared_ptr<store::etcd::EtcdStore>(std::move(*store)));
  (*etcd)->crash();
  Status s = feed->mark();
  EXPECT_FALSE(s.is_ok());
  EXPECT_NE(s.to_string().find("revision"), std::string::npos) << s.to_string();
}

}  // namespace
}  // namespace kiln::elastic
