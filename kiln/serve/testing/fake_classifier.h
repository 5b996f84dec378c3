// Test fixtures shared by the replica server and router tests: a fake
// classifier whose forward pass the test can hold (so queue states are
// exact, not timed) and the HTTP calls the tests make on loopback.
#pragma once

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kiln/serve/model.h"
#include "kiln/serve/server.h"

namespace kiln::serve::testing {

// Classifies each image by `rule`; by default (sum of pixels) mod 10, so
// image_body(k) is class k.
class FakeClassifier : public Model {
 public:
  using Rule = std::function<int(const Input&)>;
  FakeClassifier();
  explicit FakeClassifier(Rule rule);
  // Every image is class `tag` (tells replicas apart behind a router).
  static std::unique_ptr<FakeClassifier> tagged(int tag);

  const ModelInfo& info() const override { return info_; }
  std::vector<Result<Output>> run(std::vector<Input>& batch) override;

  // While held, run() blocks after counting its entry, until release().
  void hold();
  void release();
  // Whether run() was entered `n` times within 10 s.
  bool wait_entered(int n);

 private:
  Rule rule_;
  ModelInfo info_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = true;  // GUARDED_BY(mu_)
  int entered_ = 0;   // GUARDED_BY(mu_)
};

// A started replica server (port 0 on loopback) serving a FakeClassifier
// the test keeps a pointer to (owned by the server).
struct FakeReplica {
  std::unique_ptr<ReplicaServer> server;
  FakeClassifier* model = nullptr;
};
FakeReplica start_fake_replica(std::unique_ptr<FakeClassifier> model, ReplicaOptions options = {});

// {"image": [784 pixels]} with pixel 0 = `cls`, the rest 0.
std::string image_body(int cls);

struct Reply {
  int status = -1;  // -1: no HTTP answer at all
  std::string body;
  std::string retry_after;

  // The "class" of a 200 answer; -1 otherwise.
  int class_id() const;
};

// POST /v1/predict on 127.0.0.1:port (30 s read timeout).
Reply post(int port, const std::string& body);

}  // namespace kiln::serve::testing
