#include "kiln/serve/router.h"

#include <fmt/format.h>

#include <vector>

#include "kiln/base/logging.h"
#include "kiln/serve/request.h"

namespace kiln::serve {

Router::Router(const RouterOptions& options)
    : options_(options),
      latency_({0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5}) {}

Result<std::unique_ptr<Router>> Router::start(const RouterOptions& options) {
  std::unique_ptr<Router> r(new Router(options));
  Router* self = r.get();
  KILN_ASSIGN_OR_RETURN(r->upstream_, Upstream::start({.max_attempts = options.max_attempts,
                                                       .replica_timeout = options.replica_timeout,
                                                       .wait_for_replica = options.wait_for_replica,
                                                       .retry_after_s = options.retry_after_s},
                                                      [self](std::vector<UpstreamAnswer>& answers) {
                                                        self->deliver(answers);
                                                      }));
  KILN_ASSIGN_OR_RETURN(
      r->front_,
      EventFront::bind({.host = options.host, .port = options.port, .what = "router"},
                       [self](std::vector<IncomingRequest>& requests) { self->handle(requests); }));
  r->port_ = r->front_->port();
  r->front_->serve();  // front_ is set: the handler may answer through it
  return r;
}

Router::~Router() { stop(); }

void Router::stop() {
  std::call_once(stopped_, [this] {
    if (upstream_) upstream_->refuse_waiting();  // as no replica will come
    if (front_) front_->stop();                  // answers what it read, via upstream_
    if (upstream_) upstream_->stop();
  });
}

void Router::add_replica(int id, int port) { upstream_->add_replica(id, port); }

void Router::remove_replica(int id) { upstream_->remove_replica(id); }

std::string Router::render_metrics() const {
  std::string out = fmt::format(
      "# HELP kiln_serve_queue_length Requests the router accepted and has not answered (the "
      "autoscaling metric).\n# TYPE kiln_serve_queue_length gauge\nkiln_serve_queue_length {}\n"
      "# HELP kiln_serve_router_replicas Replicas receiving requests.\n"
      "# TYPE kiln_serve_router_replicas gauge\nkiln_serve_router_replicas {}\n"
      "# HELP kiln_serve_router_requests_total Requests received.\n"
      "# TYPE kiln_serve_router_requests_total counter\nkiln_serve_router_requests_total {}\n"
      "# HELP kiln_serve_router_retries_total Attempts on another replica after a failure.\n"
      "# TYPE kiln_serve_router_retries_total counter\nkiln_serve_router_retries_total {}\n"
      "# HELP kiln_serve_router_failed_total Requests answered 502/503 after every attempt.\n"
      "# TYPE kiln_serve_router_failed_total counter\nkiln_serve_router_failed_total {}\n",
      outstanding(), routable(), requests(), retries(), failed());
  latency_.render(&out, "kiln_serve_router_request_seconds",
                  "Time from a request's arrival at the router to its answer.");
  return out;
}

HttpAnswer Router::route(const HttpRequest& r) {
  if (r.method == "GET" && r.target == "/healthz") {
    return {.content_type = "text/plain", .body = "ok\n"};
  }
  if (r.method == "GET" && r.target == "/readyz") {
    const bool ok = routable() > 0;
    return {.status = ok ? 200 : 503,
            .content_type = "text/plain",
            .body = ok ? "ready\n" : "no ready replica\n"};
  }
  if (r.method == "GET" && r.target == "/metrics") {
    return {.content_type = "text/plain; version=0.0.4; charset=utf-8", .body = render_metrics()};
  }
  return unrouted_answer(r);
}

void Router::handle(std::vector<IncomingRequest>& requests) {
  std::vector<std::pair<RequestTicket, HttpAnswer>> now;
  std::vector<UpstreamRequest> forward;
  for (IncomingRequest& in : requests) {
    if (in.request.method == "POST" && in.request.target == "/v1/predict") {
      counters_.requests.fetch_add(1);
      outstanding_.fetch_add(1);
      forward.push_back({in.ticket, std::move(in.request.body), in.received});
    } else {
      now.emplace_back(in.ticket, route(in.request));
    }
  }
  if (!forward.empty()) upstream_->submit(std::move(forward));
  front_->answer(std::move(now));
}

void Router::deliver(std::vector<UpstreamAnswer>& answers) {
  const auto now = Clock::now();
  std::vector<std::pair<RequestTicket, HttpAnswer>> out;
  out.reserve(answers.size());
  for (UpstreamAnswer& a : answers) {
    if (a.answer.status == 200) {
      latency_.observe(std::chrono::duration<double>(now - a.received).count());
    }
    out.emplace_back(a.ticket, std::move(a.answer));
  }
  outstanding_.fetch_sub(answers.size());
  front_->answer(std::move(out));
}

}  // namespace kiln::serve
