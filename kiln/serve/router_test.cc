// The router in front of two in-process replica servers (fake models) over
// loopback: least-outstanding choice, retries past a dead or draining
// replica, and the wait for a first replica.
#include "kiln/serve/router.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <future>

#include "kiln/base/fd.h"
#include "kiln/serve/server.h"
#include "kiln/serve/testing/fake_classifier.h"

namespace kiln::serve {
namespace {

using testing::FakeClassifier;
using testing::FakeReplica;

// A replica whose every answer is class `tag`, one request per batch.
FakeReplica replica(int tag) {
  ReplicaOptions o;
  o.batcher.max_batch = 1;
  o.batcher.max_queue_delay = std::chrono::microseconds(0);
  return testing::start_fake_replica(FakeClassifier::tagged(tag), o);
}

std::string body() { return testing::image_body(0); }

std::pair<int, int> post(int port) {  // status (-1: no answer), class (-1: none)
  testing::Reply r = testing::post(port, body());
  return {r.status, r.class_id()};
}

// A loopback port with no listener: bound, then closed.
int dead_port() {
  Fd fd(::socket(AF_INET, SOCK_STREAM, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
  return ntohs(a.sin_port);
}

std::unique_ptr<Router> router(RouterOptions o = {}) {
  auto r = Router::start(o);
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
  return std::move(r).value();
}

TEST(Router, SendsToTheReplicaWithFewestOutstanding) {
  FakeReplica a = replica(1), b = replica(2);
  auto r = router();
  r->add_replica(0, a.server->port());
  r->add_replica(1, b.server->port());
  a.model->hold();
  // Ties go to the first; with one held there, the next goes to the other.
  auto first = std::async(std::launch::async, [&] { return post(r->port()); });
  ASSERT_TRUE(a.model->wait_entered(1));
  EXPECT_EQ(r->outstanding(), 1u);
  EXPECT_EQ(post(r->port()), std::make_pair(200, 2));
  a.model->release();
  EXPECT_EQ(first.get(), std::make_pair(200, 1));
  EXPECT_EQ(r->outstanding(), 0u);
}

TEST(Router, RetriesARequestADeadReplicaCouldNotAnswer) {
  FakeReplica live = replica(4);
  auto r = router();
  r->add_replica(0, dead_port());  // picked first: ties go to the lowest id
  r->add_replica(1, live.server->port());
  EXPECT_EQ(post(r->port()), std::make_pair(200, 4));
  EXPECT_EQ(r->retries(), 1u);
  EXPECT_EQ(r->failed(), 0u);
}

TEST(Router, EveryReplicaFailingIsAnAnswerNamingThemNotASilentDrop) {
  auto r = router({.max_attempts = 3});
  r->add_replica(0, dead_port());
  r->add_replica(1, dead_port());
  httplib::Client c("127.0.0.1", r->port());
  auto res = c.Post("/v1/predict", body(), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 502);
  EXPECT_NE(res->body.find("replica 0"), std::string::npos) << res->body;
  EXPECT_NE(res->body.find("replica 1"), std::string::npos) << res->body;
  EXPECT_EQ(r->failed(), 1u);
}

TEST(Router, AReplicas503IsRetriedElsewhere) {
  auto loading = ReplicaServer::start({});  // no weights yet: answers 503
  ASSERT_TRUE(loading.is_ok());
  FakeReplica live = replica(6);
  auto r = router();
  r->add_replica(0, (*loading)->port());
  r->add_replica(1, live.server->port());
  EXPECT_EQ(post(r->port()), std::make_pair(200, 6));
  EXPECT_EQ(r->retries(), 1u);
}

TEST(Router, ARequestWaitsForTheFirstReplicaThenTimesOutWith503) {
  auto r = router({.wait_for_replica = std::chrono::milliseconds(200)});
  httplib::Client c("127.0.0.1", r->port());
  auto res = c.Post("/v1/predict", body(), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 503);
  EXPECT_EQ(res->get_header_value("Retry-After"), "1");

  auto r2 = router({.wait_for_replica = std::chrono::seconds(30)});
  auto waiting = std::async(std::launch::async, [&] { return post(r2->port()); });
  // The request is outstanding (the autoscaler sees it) until a replica joins.
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (r2->outstanding() == 0 && std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_EQ(r2->outstanding(), 1u);
  FakeReplica late = replica(3);
  r2->add_replica(0, late.server->port());
  EXPECT_EQ(waiting.get(), std::make_pair(200, 3));
}

}  // namespace
}  // namespace kiln::serve
