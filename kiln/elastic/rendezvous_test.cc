#include "kiln/elastic/rendezvous.h"

#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <future>
#include <mutex>
#include <set>
#include <thread>

#include "kiln/store/memory_store.h"

namespace kiln::elastic {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

RendezvousOptions node(std::string id, int min, int max,
                       Clock::duration last_call = milliseconds(200)) {
  return RendezvousOptions{.self = {id, "10.0.0." + id},
                           .min_nodes = min,
                           .max_nodes = max,
                           .last_call = last_call,
                           .poll_interval = milliseconds(5)};
}

std::future<Result<Round>> join_async(std::shared_ptr<store::Store> store, RendezvousOptions o,
                                      std::int64_t min_generation = 1) {
  return std::async(std::launch::async, [store, o, min_generation] {
    Rendezvous r(store, o);
    return r.join(min_generation, Deadline::after(seconds(20)));
  });
}

TEST(Rendezvous, FullRoundClosesAndAssignsRanksBySortedNodeId) {
  auto store = std::make_shared<store::MemoryStore>();
  auto c = join_async(store, node("c", 3, 3));
  auto a = join_async(store, node("a", 3, 3));
  auto b = join_async(store, node("b", 3, 3));
  std::map<std::string, Round> rounds;
  for (auto* f : {&a, &b, &c}) {
    auto r = f->get();
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
    rounds[r->nodes[r->group_rank].id] = *r;
  }
  EXPECT_EQ(rounds["a"].group_rank, 0);
  EXPECT_EQ(rounds["b"].group_rank, 1);
  EXPECT_EQ(rounds["c"].group_rank, 2);
  for (auto& [id, r] : rounds) {
    EXPECT_EQ(r.generation, 1);
    ASSERT_EQ(r.num_nodes(), 3);
    EXPECT_EQ(r.nodes[2].addr, "10.0.0.c");
  }
}

TEST(Rendezvous, MinNodesCloseTheRoundAfterTheLastCall) {
  auto store = std::make_shared<store::MemoryStore>();
  auto a = join_async(store, node("a", 2, 4));
  auto b = join_async(store, node("b", 2, 4));
  auto ra = a.get(), rb = b.get();
  ASSERT_TRUE(ra.is_ok()) << ra.status().to_string();
  ASSERT_TRUE(rb.is_ok()) << rb.status().to_string();
  EXPECT_EQ(ra->num_nodes(), 2);
  EXPECT_EQ(rb->num_nodes(), 2);
}

TEST(Rendezvous, ExpectedNodesCloseTheRoundWithoutTheLastCall) {
  auto store = std::make_shared<store::MemoryStore>();
  ASSERT_TRUE(store->set("g1/expect", "2").is_ok());
  auto start = Clock::now();
  auto a = join_async(store, node("a", 1, 4, seconds(60)));
  auto b = join_async(store, node("b", 1, 4, seconds(60)));
  auto ra = a.get(), rb = b.get();
  ASSERT_TRUE(ra.is_ok()) << ra.status().to_string();
  ASSERT_TRUE(rb.is_ok()) << rb.status().to_string();
  // Two joined as expected: closed at once, not after the 60 s last call.
  EXPECT_LT(Clock::now() - start, seconds(20));
  EXPECT_EQ(ra->num_nodes(), 2);
  EXPECT_EQ(rb->num_nodes(), 2);
}

TEST(Rendezvous, LateNodeWaitsForTheNextRoundAndIsCountedThere) {
  auto store = std::make_shared<store::MemoryStore>();
  auto a = join_async(store, node("a", 2, 3));
  auto b = join_async(store, node("b", 2, 3));
  ASSERT_TRUE(a.get().is_ok());
  ASSERT_TRUE(b.get().is_ok());
  auto late = join_async(store, node("c", 2, 3));
  Rendezvous view(store, node("a", 2, 3));
  Deadline deadline = Deadline::after(seconds(10));
  while (*view.joined(2) == 0 && !deadline.expired()) std::this_thread::sleep_for(milliseconds(5));
  ASSERT_EQ(*view.joined(2), 1) << "the late node holds a ticket for round 2";
  EXPECT_EQ(late.wait_for(milliseconds(300)), std::future_status::timeout)
      << "round 2 must not close before the running group opens it";
  // The running group opens round 2 (scale-up) and both rejoin.
  auto opened = view.open_next(1, 2);
  ASSERT_TRUE(opened.is_ok());
  EXPECT_EQ(*opened, 2);
  auto a2 = join_async(store, node("a", 2, 3), 2);
  auto b2 = join_async(store, node("b", 2, 3), 2);
  for (auto* f : {&late, &a2, &b2}) {
    auto r = f->get();
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
    EXPECT_EQ(r->generation, 2);
    EXPECT_EQ(r->num_nodes(), 3);
  }
}

TEST(Rendezvous, OpenNextTwiceFromTheSameRoundOpensOnce) {
  auto store = std::make_shared<store::MemoryStore>();
  Rendezvous a(store, node("a", 1, 1)), b(store, node("b", 1, 1));
  EXPECT_EQ(*a.open_next(1, 3), 2);
  EXPECT_EQ(*b.open_next(1, 1), 2);
  EXPECT_EQ(*store->get("g2/expect", Deadline::after(seconds(1))), "3") << "first opener wins";
  EXPECT_EQ(*a.current_generation(), 2);
}

TEST(Rendezvous, TooFewNodesTimeOutNamingTheCount) {
  auto store = std::make_shared<store::MemoryStore>();
  Rendezvous r(store, node("a", 2, 2));
  auto joined = r.join(1, Deadline::after(milliseconds(300)));
  ASSERT_FALSE(joined.is_ok());
  EXPECT_EQ(joined.status().code(), Code::kDeadlineExceeded);
  EXPECT_NE(joined.status().message().find("1 of 2..2 nodes joined"), std::string::npos)
      << joined.status().message();
}

TEST(Rendezvous, TwoAgentsWithOneNodeIdAreRejected) {
  auto store = std::make_shared<store::MemoryStore>();
  auto a = join_async(store, node("same", 2, 2));
  auto b = join_async(store, node("same", 2, 2));
  auto ra = a.get();
  ASSERT_FALSE(ra.is_ok());
  EXPECT_EQ(ra.status().code(), Code::kInvalidArgument);
  EXPECT_NE(ra.status().message().find("--node-id"), std::string::npos);
  EXPECT_FALSE(b.get().is_ok());
}

}  // namespace
}  // namespace kiln::elastic

namespace kiln::elastic {
namespace {

TEST(Rendezvous, ALateNodeOpensTheNextRoundWhenTheRunningOneIsGone) {
  auto store = std::make_shared<store::MemoryStore>();
  {
    Rendezvous a(store, node("a", 1, 1));
    ASSERT_TRUE(a.join(1, Deadline::after(std::chrono::seconds(10))).is_ok());
  }
  // Round 1 closed with a, which then died. b is late for round 1.
  RendezvousOptions o = node("b", 1, 1);
  std::vector<std::string> asked_about;
  o.running_round_gone = [&](const Round& r) {
    for (const auto& n : r.nodes) asked_about.push_back(n.id);
    return true;
  };
  Rendezvous b(store, o);
  auto r = b.join(1, Deadline::after(std::chrono::seconds(10)));
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->generation, 2);
  ASSERT_EQ(r->num_nodes(), 1);
  EXPECT_EQ(r->nodes[0].id, "b");
  ASSERT_FALSE(asked_about.empty());
  EXPECT_EQ(asked_about[0], "a");
}

TEST(Rendezvous, ALateNodeWaitsWhileTheRunningRoundIsAlive) {
  auto store = std::make_shared<store::MemoryStore>();
  Rendezvous a(store, node("a", 1, 1));
  ASSERT_TRUE(a.join(1, Deadline::after(std::chrono::seconds(10))).is_ok());
  RendezvousOptions o = node("b", 1, 1);
  o.running_round_gone = [](const Round&) { return false; };
  Rendezvous b(store, o);
  auto r = b.join(1, Deadline::after(std::chrono::milliseconds(300)));
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("never opened by the running group"), std::string::npos)
      << r.status().message();
}

}  // namespace
}  // namespace kiln::elastic

namespace kiln::elastic {
namespace {

// A MemoryStore that tells a ChangeFeed about every write, and counts reads.
class NotifyingStore final : public store::Store, public ChangeFeed {
 public:
  Status set(std::string_view k, std::string_view v) override {
    Status s = inner_.set(k, v);
    changed();
    return s;
  }
  Result<std::string> get(std::string_view k, Deadline d) override {
    ++reads_;
    return inner_.get(k, d);
  }
  Result<std::int64_t> add(std::string_view k, std::int64_t delta) override {
    auto r = inner_.add(k, delta);
    if (delta != 0) changed();
    return r;
  }
  Result<std::string> compare_set(std::string_view k, std::string_view expected,
                                  std::string_view desired) override {
    ++reads_;
    // What it held before tells a swap from a failed one that found `desired`.
    std::string key(k), before;
    if (*inner_.check(std::span<const std::string>(&key, 1))) {
      before = *inner_.get(k, Deadline::after(std::chrono::seconds(1)));
    }
    auto r = inner_.compare_set(k, expected, desired);
    if (r.is_ok() && before == expected && desired != before) changed();
    return r;
  }
  Status wait(std::span<const std::string> keys, Deadline d) override {
    return inner_.wait(keys, d);
  }
  Result<bool> erase(std::string_view k) override {
    auto r = inner_.erase(k);
    changed();
    return r;
  }
  Result<bool> check(std::span<const std::string> keys) override {
    ++reads_;
    return inner_.check(keys);
  }

  // ChangeFeed, for one waiting agent.
  Status mark() override {
    std::lock_guard lock(mu_);
    marked_ = version_;
    return Status::ok();
  }
  Status wait(Deadline d) override {
    std::unique_lock lock(mu_);
    ++waiting_;
    bool changed = cv_.wait_for(lock, d.remaining(), [&] { return version_ != marked_; });
    --waiting_;
    if (changed) return Status::ok();
    return deadline_exceeded("no change");
  }

  int reads() const { return reads_.load(); }
  bool someone_waits() {
    std::lock_guard lock(mu_);
    return waiting_ > 0;
  }

 private:
  void changed() {
    {
      std::lock_guard lock(mu_);
      ++version_;
    }
    cv_.notify_all();
  }
  store::MemoryStore inner_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::int64_t version_ = 0, marked_ = 0;  // guarded by mu_
  int waiting_ = 0;                        // guarded by mu_
  std::atomic<int> reads_{0};
};

// With a change feed, a waiting agent reads when something changed or the
// last call ends, not every poll interval (here an hour: polling would
// never close these rounds in time).
TEST(Rendezvous, WithAChangeFeedWaitingAgentsWakeOnChangesAndTheLastCall) {
  auto feed_a = std::make_shared<NotifyingStore>();
  RendezvousOptions a = node("a", 2, 2), b = node("b", 2, 2);
  for (auto* o : {&a, &b}) {
    o->poll_interval = std::chrono::hours(1);
    o->feed_recheck = std::chrono::hours(1);
  }
  a.changes = feed_a;
  auto ra = join_async(feed_a, a);
  // a waits on the feed; while nobody writes it reads nothing.
  Deadline deadline = Deadline::after(seconds(10));
  while (!feed_a->someone_waits() && !deadline.expired()) {
    std::this_thread::sleep_for(milliseconds(5));
  }
  ASSERT_TRUE(feed_a->someone_waits());
  const int reads = feed_a->reads();
  EXPECT_EQ(ra.wait_for(milliseconds(300)), std::future_status::timeout);
  EXPECT_EQ(feed_a->reads(), reads) << "a waiting agent polled without a change";
  // b joins and closes the full round; its writes wake a.
  {
    Rendezvous rb(feed_a, b);
    auto joined = rb.join(1, Deadline::after(seconds(10)));
    ASSERT_TRUE(joined.is_ok()) << joined.status().to_string();
  }
  auto r = ra.get();
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->num_nodes(), 2);

  // Alone in a 1..2 round, an agent wakes when the last call ends.
  auto feed = std::make_shared<NotifyingStore>();
  RendezvousOptions solo = node("c", 1, 2, milliseconds(200));
  solo.poll_interval = solo.feed_recheck = std::chrono::hours(1);
  solo.changes = feed;
  auto rc = join_async(feed, solo);
  ASSERT_EQ(rc.wait_for(seconds(10)), std::future_status::ready);
  auto closed = rc.get();
  ASSERT_TRUE(closed.is_ok()) << closed.status().to_string();
  EXPECT_EQ(closed->num_nodes(), 1);
}

}  // namespace
}  // namespace kiln::elastic
