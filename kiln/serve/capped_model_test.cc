// cap_capacity: a replica that cannot serve more than its capacity (Note [A
// replica's capacity, enforced]). Times are lower bounds only: a batch
// never finishes sooner than its share of the capacity allows.
#include "kiln/serve/capped_model.h"

#include <gtest/gtest.h>

#include <future>
#include <vector>

#include "kiln/serve/server.h"
#include "kiln/serve/testing/fake_classifier.h"

namespace kiln::serve {
namespace {

using testing::FakeClassifier;
using testing::image_body;
using testing::post;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

TEST(CappedModel, ABatchTakesItsSizeOverTheCapacityAndKeepsItsAnswers) {
  auto model = cap_capacity(std::make_unique<FakeClassifier>(), 1000);
  std::vector<Input> batch(20);
  for (int i = 0; i < 20; ++i) batch[static_cast<std::size_t>(i)].image.assign(784, 0.f);
  for (int i = 0; i < 20; ++i) batch[static_cast<std::size_t>(i)].image[0] = static_cast<float>(i % 10);
  const auto start = Clock::now();
  auto out = model->run(batch);
  EXPECT_GE(seconds_since(start), 0.020);  // 20 requests at 1,000 req/s
  ASSERT_EQ(out.size(), 20u);
  for (int i = 0; i < 20; ++i) {
    const auto& logits = out[static_cast<std::size_t>(i)]->logits;
    EXPECT_EQ(std::max_element(logits.begin(), logits.end()) - logits.begin(), i % 10) << i;
  }
  EXPECT_EQ(model->info().name, FakeClassifier().info().name);
}

TEST(CappedModel, AReplicaAnswersEveryRequestNoFasterThanItsCapacity) {
  ReplicaOptions o;
  o.batcher.max_batch = 8;
  auto server = ReplicaServer::start(o);
  ASSERT_TRUE(server.is_ok()) << server.status().to_string();
  (*server)->set_model(cap_capacity(std::make_unique<FakeClassifier>(), 200));
  const auto start = Clock::now();
  std::vector<std::future<int>> answers;
  for (int i = 0; i < 40; ++i) {
    answers.push_back(std::async(std::launch::async, [&, i] {
      return post((*server)->port(), image_body(i % 10)).class_id();
    }));
  }
  for (int i = 0; i < 40; ++i) EXPECT_EQ(answers[static_cast<std::size_t>(i)].get(), i % 10) << i;
  EXPECT_GE(seconds_since(start), 0.2);  // 40 requests at 200 req/s, however batched
}

}  // namespace
}  // namespace kiln::serve
