// ReplicaServer: one model replica's HTTP front (EventFront: one epoll
// thread, Note [One thread for the front] in event_front.h).
//
//   POST /v1/predict  one request (request.h); dynamic batching behind it
//   GET  /healthz     200 while the process serves HTTP (liveness)
//   GET  /readyz      200 once the weights are loaded and until drain begins
//   GET  /metrics     Prometheus text (metrics.h)
//
// Answers: 400 naming what is malformed (the JSON or the HTTP); 404/405
// for another path or method; 503 + Retry-After when the queue
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
#include <vector>

#include "kiln/base/status.h"
#include "kiln/serve/batcher.h"
#include "kiln/serve/event_front.h"
#include "kiln/serve/metrics.h"
#include "kiln/serve/model.h"

namespace kiln::serve {

struct ReplicaOptions {
  std::string host = "127.0.0.1";
  int port = 0;  // 0: any free port (see port())
  BatcherOptions batcher;
  int retry_after_s = 1;  // the Retry-After of a 503
  // A request begun and not complete this long: 408 (a slow or dead client).
  std::chrono::milliseconds read_timeout{10000};
  // The front thread's CPUs (empty: the scheduler's choice); the batch
  // worker's are batcher.worker_cpus. Note [The batch worker's own core].
  std::vector<int> front_cpus;
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
  // What a predict request's answer needs once its batch has run.
  struct PredictTag {
    RequestTicket ticket;
    Clock::time_point received;
    int max_new_tokens = 0;  // the response's shape depends on it
  };
  using Batcher = DynamicBatcher<Input, Output, PredictTag>;

  // On the front's loop thread: every request read in one wake-up; the
  // predictions go to the batcher in one submission.
  void handle(std::vector<IncomingRequest>& requests);
  // On the batcher's worker: a batch's answers, handed to the front at once.
  void complete(std::vector<std::pair<PredictTag, Result<Output>>>& done);
  HttpAnswer route(const HttpRequest& request);
  HttpAnswer unavailable(const std::string& message) const;
  LiveGauges live() const;

  ReplicaOptions options_;
  ServeMetrics metrics_;
  std::unique_ptr<EventFront> front_;
  int port_ = 0;

  mutable std::mutex mu_;
  std::unique_ptr<Model> model_;      // GUARDED_BY(mu_) for the swap; immutable once set
  std::unique_ptr<Batcher> batcher_;  // GUARDED_BY(mu_) for the swap
  std::atomic<bool> ready_{false};
  std::atomic<bool> draining_{false};
  std::atomic<std::size_t> in_flight_{0};
  std::once_flag drained_;
};

}  // namespace kiln::serve
