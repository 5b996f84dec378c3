// ReplicaServer over real HTTP on loopback (port 0) with a fake model whose
// forward pass the test can hold, so queue states are exact, not timed.
#include "kiln/serve/server.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include <future>
#include <nlohmann/json.hpp>
#include <set>

#include "kiln/serve/testing/fake_classifier.h"

namespace kiln::serve {
namespace {

using testing::FakeClassifier;
using testing::image_body;
using testing::post;
using testing::Reply;

int get_status(int port, const std::string& path) {
  httplib::Client c("127.0.0.1", port);
  auto r = c.Get(path);
  return r ? r->status : -1;
}

// Polls /metrics until `series` reads `value` (bounded).
bool metric_reaches(int port, const std::string& series, double value) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < end) {
    httplib::Client c("127.0.0.1", port);
    if (auto r = c.Get("/metrics")) {
      auto at = r->body.find("\n" + series + " ");
      if (at != std::string::npos && std::stod(r->body.substr(at + series.size() + 2)) == value) {
        return true;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

std::unique_ptr<ReplicaServer> start(ReplicaOptions o = {}) {
  auto s = ReplicaServer::start(o);
  EXPECT_TRUE(s.is_ok()) << s.status().to_string();
  return std::move(s).value();
}

TEST(ReplicaServer, LiveAtOnceReadyOnlyWithWeightsAndAnswersTheClass) {
  auto server = start();
  const int port = server->port();
  EXPECT_EQ(get_status(port, "/healthz"), 200);
  EXPECT_EQ(get_status(port, "/readyz"), 503);
  Reply early = post(port, image_body(3));
  EXPECT_EQ(early.status, 503);
  EXPECT_NE(early.body.find("loading"), std::string::npos) << early.body;

  server->set_model(std::make_unique<FakeClassifier>());
  EXPECT_EQ(get_status(port, "/readyz"), 200);
  for (int cls : {3, 8}) {
    Reply r = post(port, image_body(cls));
    ASSERT_EQ(r.status, 200) << r.body;
    auto j = nlohmann::json::parse(r.body);
    EXPECT_EQ(j["class"], cls);
    EXPECT_EQ(j["step"], 7);
  }
  httplib::Client c("127.0.0.1", port);
  auto m = c.Get("/metrics");
  ASSERT_TRUE(m);
  EXPECT_NE(m->body.find("kiln_serve_responses_total{class=\"ok\"} 2"), std::string::npos)
      << m->body;
  EXPECT_NE(m->body.find("kiln_serve_request_seconds_count 2"), std::string::npos);
  EXPECT_NE(m->body.find("kiln_serve_batch_size_bucket{le=\"1\"}"), std::string::npos);
}

TEST(ReplicaServer, MalformedRequestsGet400NamingTheProblem) {
  auto server = start();
  server->set_model(std::make_unique<FakeClassifier>());
  const int port = server->port();
  struct Case {
    std::string body, mentions;
  };
  for (const Case& c : {Case{"{not json", "not valid JSON"}, Case{"[1,2]", "JSON object"},
                        Case{"{}", "'image' is missing"},
                        Case{R"({"image": [1, 2, 3]})", "784 pixels; got 3 values"},
                        Case{R"({"image": "cat"})", "got string"}}) {
    Reply r = post(port, c.body);
    EXPECT_EQ(r.status, 400) << c.body;
    EXPECT_NE(r.body.find(c.mentions), std::string::npos) << c.body << " -> " << r.body;
  }
  std::vector<int> bad(784, 0);
  bad[5] = 300;
  Reply r = post(port, nlohmann::json{{"image", bad}}.dump());
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.find("'image'[5]"), std::string::npos) << r.body;
}

TEST(ReplicaServer, OverloadGets503WithRetryAfterAndNoRequestIsLost) {
  ReplicaOptions o;
  o.batcher = {.max_batch = 1, .max_queue_delay = std::chrono::microseconds(0), .max_queue = 2};
  o.retry_after_s = 2;
  auto server = start(o);
  auto* model = new FakeClassifier;
  model->hold();
  server->set_model(std::unique_ptr<Model>(model));
  const int port = server->port();
  std::vector<std::future<Reply>> accepted;
  accepted.push_back(std::async(std::launch::async, [&] { return post(port, image_body(1)); }));
  ASSERT_TRUE(model->wait_entered(1));
  for (int i = 0; i < 2; ++i) {
    accepted.push_back(
        std::async(std::launch::async, [&, i] { return post(port, image_body(2 + i)); }));
  }
  ASSERT_TRUE(metric_reaches(port, "kiln_serve_queue_length", 2));
  Reply over = post(port, image_body(9));
  EXPECT_EQ(over.status, 503);
  EXPECT_EQ(over.retry_after, "2");
  EXPECT_NE(over.body.find("queue full"), std::string::npos) << over.body;
  model->release();
  for (int i = 0; i < 3; ++i) {
    Reply r = accepted[i].get();
    ASSERT_EQ(r.status, 200) << i << " " << r.body;
    EXPECT_EQ(nlohmann::json::parse(r.body)["class"], 1 + i);
  }
}

TEST(ReplicaServer, DrainAnswersEverythingQueuedAndRefusesNewWork) {
  ReplicaOptions o;
  o.batcher = {.max_batch = 4, .max_queue_delay = std::chrono::seconds(60), .max_queue = 100};
  auto server = start(o);
  auto* model = new FakeClassifier;
  model->hold();
  server->set_model(std::unique_ptr<Model>(model));
  const int port = server->port();
  std::vector<std::future<Reply>> accepted;
  for (int i = 0; i < 10; ++i) {
    accepted.push_back(
        std::async(std::launch::async, [&, i] { return post(port, image_body(i)); }));
  }
  // 4 in the held batch, 6 queued (a partial batch that would wait 60 s).
  ASSERT_TRUE(model->wait_entered(1));
  ASSERT_TRUE(metric_reaches(port, "kiln_serve_queue_length", 6));
  std::thread drainer([&] { server->drain(); });
  ASSERT_TRUE(metric_reaches(port, "kiln_serve_ready", 0));
  Reply late = post(port, image_body(1));
  EXPECT_EQ(late.status, 503);
  EXPECT_NE(late.body.find("draining"), std::string::npos);
  model->release();
  drainer.join();
  std::set<int> classes;
  for (auto& f : accepted) {
    Reply r = f.get();
    ASSERT_EQ(r.status, 200) << r.body;
    classes.insert(nlohmann::json::parse(r.body)["class"].get<int>());
  }
  EXPECT_EQ(classes.size(), 10u);
  EXPECT_EQ(get_status(port, "/healthz"), -1);  // stopped
}

}  // namespace
}  // namespace kiln::serve
