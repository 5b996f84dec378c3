#include "kiln/serve/testing/fake_classifier.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include <chrono>
#include <nlohmann/json.hpp>

namespace kiln::serve::testing {

FakeClassifier::FakeClassifier()
    : FakeClassifier([](const Input& in) {
        double sum = 0;
        for (float p : in.image) sum += p;
        return static_cast<int>(sum) % 10;
      }) {}

FakeClassifier::FakeClassifier(Rule rule) : rule_(std::move(rule)) {
  info_.task = TaskKind::kClassify;
  info_.name = "fake";
  info_.step = 7;
}

std::unique_ptr<FakeClassifier> FakeClassifier::tagged(int tag) {
  return std::make_unique<FakeClassifier>([tag](const Input&) { return tag; });
}

std::vector<Result<Output>> FakeClassifier::run(std::vector<Input>& batch) {
  std::unique_lock<std::mutex> lock(mu_);
  ++entered_;
  cv_.notify_all();
  cv_.wait(lock, [&] { return open_; });
  std::vector<Result<Output>> out;
  for (const auto& in : batch) {
    Output o;
    o.logits.assign(static_cast<std::size_t>(info_.classes), 0.f);
    o.logits[static_cast<std::size_t>(rule_(in))] = 1.f;
    out.emplace_back(std::move(o));
  }
  return out;
}

void FakeClassifier::hold() {
  std::lock_guard<std::mutex> lock(mu_);
  open_ = false;
}

void FakeClassifier::release() {
  std::lock_guard<std::mutex> lock(mu_);
  open_ = true;
  cv_.notify_all();
}

bool FakeClassifier::wait_entered(int n) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, std::chrono::seconds(10), [&] { return entered_ >= n; });
}

FakeReplica start_fake_replica(std::unique_ptr<FakeClassifier> model, ReplicaOptions options) {
  auto s = ReplicaServer::start(options);
  EXPECT_TRUE(s.is_ok()) << s.status().to_string();
  if (!s.is_ok()) return {};
  FakeReplica r{std::move(s).value(), model.get()};
  r.server->set_model(std::move(model));
  return r;
}

std::string image_body(int cls) {
  std::vector<int> image(784, 0);
  image[0] = cls;
  return nlohmann::json{{"image", image}}.dump();
}

int Reply::class_id() const {
  if (status != 200) return -1;
  auto j = nlohmann::json::parse(body, nullptr, false);
  return j.is_object() && j.contains("class") ? j["class"].get<int>() : -1;
}

Reply post(int port, const std::string& body) {
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(30, 0);
  auto r = c.Post("/v1/predict", body, "application/json");
  if (!r) return {};
  return {r->status, r->body, r->get_header_value("Retry-After")};
}

}  // namespace kiln::serve::testing
