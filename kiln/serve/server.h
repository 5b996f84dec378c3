// ReplicaServer: one model replica's HTTP front (cpp-httplib).
//
//   POST /v1/predict  one request (request.h); dynamic batching behind it
//   GET  /healthz     200 while the process serves HTTP (liveness)
//   GET  /readyz      200 once the weights are loaded and until drain begins
//   GET  /metrics     Prometheus text (metrics.h)
//
// Answers: 400 naming what is malformed; 503 + Retry-After when the queue
// is over its bound, before the weights are loaded, or while draining; 500
// if the forward pass fails. A request is never dropped without an answer.
//
// Lifecycle: start() binds and serves at once (liveness, not readiness);
// set_model() makes it ready; drain() (SIGTERM) turns readiness off,
// refuses new requests with 503, answers every queued one, then stops the
// HTTP server. Thread-safe.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "kiln/base/status.h"
#include "kiln/serve/batcher.h"
#include "kiln/serve/metrics.h"
#include "kiln/serve/model.h"

namespace httplib {
class Server;
}

namespace kiln::serve {

struct ReplicaOptions {
  std::string host = "127.0.0.1";
  int port = 0;  // 0: any free port (see port())
  BatcherOptions batcher;
  // Note [Threads per keep-alive connection]: httplib serves a keep-alive
  // connection on one pool thread until the connection idles for 5 s, so a
  // server with fewer threads than open connections leaves the extra ones
  // unserved for seconds. A replica must have more threads than the
  // connections a router keeps to it (one per router thread, 256) plus
  // direct clients.
  int http_threads = 512;
  int retry_after_s = 1;  // the Retry-After of a 503
};

class ReplicaServer {
 public:
  // Binds host:port and serves. Unavailable naming host:port if it cannot bind.
  static Result<std::unique_ptr<ReplicaServer>> start(const ReplicaOptions& options);
  ~ReplicaServer();  // drains
  ReplicaServer(const ReplicaServer&) = delete;
  ReplicaServer& operator=(const ReplicaServer&) = delete;

  // Serves `model` from now on (readiness turns on). Once only.
  void set_model(std::unique_ptr<Model> model);
  // Stops accepting, answers everything accepted, stops HTTP. Blocks until
  // done; idempotent.
  void drain();

  int port() const { return port_; }
  ServeMetrics& metrics() { return metrics_; }

 private:
  explicit ReplicaServer(const ReplicaOptions& options);
  void install_routes();
  // The status code and body for one predict request.
  std::pair<int, std::string> predict(const std::string& body);
  LiveGauges live() const;

  using Batcher = DynamicBatcher<Input, Output>;

  ReplicaOptions options_;
  ServeMetrics metrics_;
  std::unique_ptr<httplib::Server> http_;
  int port_ = 0;
  std::thread http_thread_;  // job: httplib's accept loop

  mutable std::mutex mu_;
  std::unique_ptr<Model> model_;      // GUARDED_BY(mu_) for the swap; immutable once set
  std::unique_ptr<Batcher> batcher_;  // GUARDED_BY(mu_) for the swap
  std::atomic<bool> ready_{false};
  std::atomic<bool> draining_{false};
  std::atomic<std::size_t> in_flight_{0};
  std::once_flag drained_;
};

}  // namespace kiln::serve
