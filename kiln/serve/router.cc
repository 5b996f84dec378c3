#include "kiln/serve/router.h"

#include <fmt/format.h>
#include <httplib.h>

#include <vector>

#include "kiln/base/deadline.h"
#include "kiln/base/logging.h"
#include "kiln/serve/http_front.h"
#include "kiln/serve/request.h"

namespace kiln::serve {

// One replica: its port, what this router has outstanding on it, and a pool
// of keep-alive clients (an httplib::Client serves one request at a time).
struct Router::Replica {
  int id = 0;
  int port = 0;
  std::atomic<std::size_t> outstanding{0};
  std::mutex mu;
  std::vector<std::unique_ptr<httplib::Client>> idle;  // GUARDED_BY(mu)

  std::unique_ptr<httplib::Client> take(std::chrono::milliseconds timeout) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!idle.empty()) {
        auto c = std::move(idle.back());
        idle.pop_back();
        return c;
      }
    }
    auto c = std::make_unique<httplib::Client>("127.0.0.1", port);
    c->set_keep_alive(true);
    c->set_tcp_nodelay(true);  // Note [TCP_NODELAY] in http_front.cc
    c->set_connection_timeout(std::chrono::seconds(2));
    c->set_read_timeout(timeout);
    c->set_write_timeout(timeout);
    return c;
  }
  void give_back(std::unique_ptr<httplib::Client> c) {
    std::lock_guard<std::mutex> lock(mu);
    idle.push_back(std::move(c));
  }
};

Router::Router(const RouterOptions& options)
    : options_(options),
      http_(std::make_unique<httplib::Server>()),
      latency_({0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5}) {}

Result<std::unique_ptr<Router>> Router::start(const RouterOptions& options) {
  std::unique_ptr<Router> r(new Router(options));
  Router* self = r.get();
  r->http_->Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  r->http_->Get("/readyz", [self](const httplib::Request&, httplib::Response& res) {
    const bool ok = self->routable() > 0;
    res.status = ok ? 200 : 503;
    res.set_content(ok ? "ready\n" : "no ready replica\n", "text/plain");
  });
  r->http_->Get("/metrics", [self](const httplib::Request&, httplib::Response& res) {
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
        self->outstanding(), self->routable(), self->counters_.requests.load(),
        self->counters_.retries.load(), self->counters_.failed.load());
    self->latency_.render(&out, "kiln_serve_router_request_seconds",
                          "Time from a request's arrival at the router to its answer.");
    res.set_content(out, "text/plain; version=0.0.4; charset=utf-8");
  });
  r->http_->Post("/v1/predict", [self](const httplib::Request& req, httplib::Response& res) {
    const auto start = Clock::now();
    self->counters_.requests.fetch_add(1);
    self->outstanding_.fetch_add(1);
    auto [status, body] = self->forward(req.body);
    self->outstanding_.fetch_sub(1);
    res.status = status;
    if (status == 503) {
      res.set_header("Retry-After", std::to_string(self->options_.retry_after_s));
    }
    res.set_content(body, "application/json");
    if (status == 200) {
      self->latency_.observe(std::chrono::duration<double>(Clock::now() - start).count());
    }
  });
  KILN_ASSIGN_OR_RETURN(r->port_, start_http_front(*r->http_,
                                                   {.host = options.host,
                                                    .port = options.port,
                                                    .threads = options.http_threads,
                                                    .what = "router"},
                                                   &r->http_thread_));
  return r;
}

Router::~Router() { stop(); }

void Router::stop() {
  std::call_once(stopped_, [this] {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    replica_added_.notify_all();
    http_->stop();
    if (http_thread_.joinable()) http_thread_.join();
  });
}

void Router::add_replica(int id, int port) {
  auto r = std::make_shared<Replica>();
  r->id = id;
  r->port = port;
  {
    std::lock_guard<std::mutex> lock(mu_);
    replicas_[id] = std::move(r);
  }
  replica_added_.notify_all();
}

void Router::remove_replica(int id) {
  std::lock_guard<std::mutex> lock(mu_);
  replicas_.erase(id);
}

std::size_t Router::routable() const {
  std::lock_guard<std::mutex> lock(mu_);
  return replicas_.size();
}

std::shared_ptr<Router::Replica> Router::pick(const std::vector<int>& tried) {
  std::unique_lock<std::mutex> lock(mu_);
  if (tried.empty()) {
    replica_added_.wait_for(lock, options_.wait_for_replica,
                            [&] { return stopping_ || !replicas_.empty(); });
  }
  std::shared_ptr<Replica> best;
  for (const auto& [id, r] : replicas_) {
    if (std::find(tried.begin(), tried.end(), id) != tried.end()) continue;
    if (!best || r->outstanding.load() < best->outstanding.load()) best = r;
  }
  return best;
}

std::pair<int, std::string> Router::forward(const std::string& body) {
  std::vector<int> tried;
  std::string failures;
  bool all_refused = true;  // every attempt got 503 (or no replica): the client should retry
  for (int attempt = 0; attempt < options_.max_attempts; ++attempt) {
    std::shared_ptr<Replica> r = pick(tried);
    if (!r) break;
    if (attempt > 0) counters_.retries.fetch_add(1);
    tried.push_back(r->id);
    r->outstanding.fetch_add(1);
    auto client = r->take(options_.replica_timeout);
    auto res = client->Post("/v1/predict", body, "application/json");
    r->outstanding.fetch_sub(1);
    if (!res) {
      // The replica died or the connection broke mid-request: another one answers.
      all_refused = false;
      failures += fmt::format("{}replica {} (port {}): {}", failures.empty() ? "" : "; ", r->id,
                              r->port, httplib::to_string(res.error()));
      continue;
    }
    r->give_back(std::move(client));
    if (res->status == 503) {
      failures +=
          fmt::format("{}replica {}: 503 {}", failures.empty() ? "" : "; ", r->id, res->body);
      continue;
    }
    return {res->status, res->body};
  }
  counters_.failed.fetch_add(1);
  if (tried.empty())
    return {503,
            error_json(fmt::format(
                "no ready replica within {} ms (the fleet is starting, or every replica failed)",
                options_.wait_for_replica.count()))};
  if (all_refused) {
    return {503, error_json(fmt::format("every replica tried is busy or draining: {}", failures))};
  }
  log()->warn("router: a request failed on {} replica(s): {}", tried.size(), failures);
  return {502, error_json(
                   fmt::format("the request failed on {} replica(s): {}", tried.size(), failures))};
}

}  // namespace kiln::serve
