// Router: the HTTP front of a fleet of replica processes on this host.
//
// POST /v1/predict goes to the routable replica with the fewest requests
// outstanding from this router (least outstanding requests, which on equal
// replicas approximates one shared queue). A replica that fails a request
// without an HTTP answer (killed, connection reset) or answers 503
// (draining, queue full) has the request retried on another replica: an
// inference is idempotent. After `max_attempts` the client gets 503 +
// Retry-After (every replica refused, or none became routable within
// `wait_for_replica`) or 502 naming the failures: never a silent drop.
//
// GET /metrics exports kiln_serve_queue_length: requests the router has
// accepted and not yet answered, the fleet's autoscaling metric (a
// Kubernetes HPA or KEDA can scale on the same series). /healthz; /readyz is
// 200 while at least one replica is routable.
//
// Two threads whatever the load: the front (EventFront) and the upstream
// loop (Note [A router without a thread per request] in upstream.h).
//
// Thread-safe. The fleet controller adds replicas once ready and removes
// them before draining or once dead.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/serve/event_front.h"
#include "kiln/serve/metrics.h"
#include "kiln/serve/upstream.h"

namespace kiln::serve {

struct RouterOptions {
  std::string host = "127.0.0.1";
  int port = 0;
  int max_attempts = 3;
  std::chrono::milliseconds replica_timeout{30000};  // per attempt
  int retry_after_s = 1;
  // While no replica is routable (the fleet is starting, or every replica
  // died), a request waits this long for one instead of failing at once:
  // it stays in the queue the autoscaler sees (Knative's activator does the same).
  std::chrono::milliseconds wait_for_replica{30000};
};

struct RouterCounters {
  std::atomic<std::uint64_t> requests{0};
};

class Router {
 public:
  static Result<std::unique_ptr<Router>> start(const RouterOptions& options);
  ~Router();
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // Routes new requests to replica `id` at 127.0.0.1:`port` too.
  void add_replica(int id, int port);
  // No new requests to `id`; those in flight finish (or fail and are retried).
  void remove_replica(int id);

  std::size_t outstanding() const { return outstanding_.load(); }
  std::size_t routable() const { return upstream_->routable(); }
  int port() const { return port_; }
  std::uint64_t requests() const { return counters_.requests.load(); }
  std::uint64_t retries() const { return upstream_->counters().retries.load(); }
  std::uint64_t failed() const { return upstream_->counters().failed.load(); }
  // Stops serving HTTP (after the requests in flight are answered).
  void stop();

 private:
  explicit Router(const RouterOptions& options);
  // On the front's loop: a wake-up's requests; predictions go upstream at once.
  void handle(std::vector<IncomingRequest>& requests);
  // On the upstream loop: its answers, handed to the front at once.
  void deliver(std::vector<UpstreamAnswer>& answers);
  HttpAnswer route(const HttpRequest& request);
  std::string render_metrics() const;

  RouterOptions options_;
  std::unique_ptr<Upstream> upstream_;
  std::unique_ptr<EventFront> front_;
  int port_ = 0;
  std::atomic<std::size_t> outstanding_{0};
  RouterCounters counters_;
  Histogram latency_;
  std::once_flag stopped_;
};

}  // namespace kiln::serve
