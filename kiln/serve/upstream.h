// Upstream: the router's side towards its replicas, on one epoll thread.
//
// Note [A router without a thread per request]: the router's HTTP front is
// an EventFront (event_front.h), and its forwarding is this loop: each
// replica gets a few keep-alive connections that carry pipelined requests
// (a replica's own front reads them as one batch per wake-up and answers
// them in order), and answers are matched to requests by their order on the
// connection. A request goes to the routable replica with the fewest
// requests outstanding from this router; one that a replica fails without
// an HTTP answer (killed, connection reset, no answer within the attempt's
// timeout) or answers 503 is retried on another replica (an inference is
// idempotent). With no routable replica a request waits up to
// `wait_for_replica` for one. After `max_attempts` it is answered 503 +
// Retry-After (every replica refused, or none came) or 502 naming the
// failures: never dropped.
//
// Thread-safe: submit(), add_replica() and remove_replica() from any thread.
// Answers go to the sink on the loop thread, in batches.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"
#include "kiln/serve/event_front.h"

namespace kiln::serve {

struct UpstreamOptions {
  int max_attempts = 3;
  std::chrono::milliseconds replica_timeout{30000};  // per attempt
  std::chrono::milliseconds wait_for_replica{30000};
  int retry_after_s = 1;
  int connections_per_replica = 4;  // each carries pipelined requests
};

struct UpstreamRequest {
  RequestTicket ticket;
  std::string body;  // POST /v1/predict
  Clock::time_point received;
};

struct UpstreamAnswer {
  RequestTicket ticket;
  HttpAnswer answer;
  Clock::time_point received;
};

struct UpstreamCounters {
  std::atomic<std::uint64_t> retries{0};  // attempts beyond the first
  std::atomic<std::uint64_t> failed{0};   // answered 502/503 after every attempt
};

class Upstream {
 public:
  using Sink = std::function<void(std::vector<UpstreamAnswer>& answers)>;

  static Result<std::unique_ptr<Upstream>> start(const UpstreamOptions& options, Sink sink);
  ~Upstream();  // stop()
  Upstream(const Upstream&) = delete;
  Upstream& operator=(const Upstream&) = delete;

  void submit(std::vector<UpstreamRequest> requests);
  void add_replica(int id, int port);
  void remove_replica(int id);  // no new requests; those in flight finish
  std::size_t routable() const {
    std::lock_guard<std::mutex> lock(ids_mu_);
    return ids_.size();
  }
  const UpstreamCounters& counters() const { return counters_; }

  // Requests waiting for a replica are answered 503 at once from now on;
  // those in flight finish. Then stop().
  void refuse_waiting();
  // Joins the loop once nothing is in flight (or after `grace`). Idempotent.
  void stop(std::chrono::milliseconds grace = std::chrono::seconds(30));

 private:
  class Loop;
  Upstream() = default;

  mutable std::mutex ids_mu_;
  std::set<int> ids_;  // GUARDED_BY(ids_mu_): the routable replicas
  UpstreamCounters counters_;
  std::unique_ptr<Loop> loop_;
  std::thread thread_;  // job: the upstream event loop
  std::once_flag stopped_;
};

}  // namespace kiln::serve
