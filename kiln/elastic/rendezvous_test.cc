#include "kiln/elastic/rendezvous.h"

#include <gtest/gtest.h>

#include <future>
#include <set>

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
