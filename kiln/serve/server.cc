#include "kiln/serve/server.h"

#include <fmt/format.h>
#include <httplib.h>

#include <chrono>

#include "kiln/base/check.h"
#include "kiln/base/logging.h"
#include "kiln/serve/http_front.h"
#include "kiln/serve/request.h"

namespace kiln::serve {
namespace {

constexpr char kJson[] = "application/json";

}  // namespace

ReplicaServer::ReplicaServer(const ReplicaOptions& options)
    : options_(options), http_(std::make_unique<httplib::Server>()) {}

Result<std::unique_ptr<ReplicaServer>> ReplicaServer::start(const ReplicaOptions& options) {
  std::unique_ptr<ReplicaServer> s(new ReplicaServer(options));
  s->install_routes();
  KILN_ASSIGN_OR_RETURN(s->port_, start_http_front(*s->http_,
                                                   {.host = options.host,
                                                    .port = options.port,
                                                    .threads = options.http_threads,
                                                    .what = "serve"},
                                                   &s->http_thread_));
  return s;
}

ReplicaServer::~ReplicaServer() { drain(); }

void ReplicaServer::set_model(std::unique_ptr<Model> model) {
  std::lock_guard<std::mutex> lock(mu_);
  KILN_CHECK_MSG(model_ == nullptr, "ReplicaServer::set_model called twice");
  model_ = std::move(model);
  Model* m = model_.get();
  batcher_ = std::make_unique<Batcher>(
      options_.batcher, [m](std::vector<Input>& batch) { return m->run(batch); }, &metrics_);
  ready_ = true;
}

LiveGauges ReplicaServer::live() const {
  LiveGauges g;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (batcher_) g.queue_length = batcher_->queue_length();
  }
  g.in_flight = in_flight_.load();
  g.ready = ready_.load() && !draining_.load();
  return g;
}

std::pair<int, std::string> ReplicaServer::predict(const std::string& body) {
  Batcher* batcher;
  Model* model;
  {
    std::lock_guard<std::mutex> lock(mu_);
    batcher = batcher_.get();
    model = model_.get();
  }
  if (draining_)
    return {503, error_json("draining (SIGTERM): send this request to another replica")};
  if (batcher == nullptr) return {503, error_json("not ready: the weights are still loading")};
  Result<Input> input = parse_request(body, model->info());
  if (!input.is_ok()) return {400, error_json(input.status().message())};
  const int max_new_tokens = input->max_new_tokens;  // the response's shape depends on it
  auto submitted = batcher->submit(std::move(input).value());
  if (!submitted.is_ok()) {
    const Status& s = submitted.status();
    return {503, error_json(s.message())};
  }
  Result<Output> out = std::move(submitted).value().get();
  if (!out.is_ok()) return {500, error_json(out.status().to_string())};
  Input shape;
  shape.max_new_tokens = max_new_tokens;
  return {200, response_json(shape, *out, model->info())};
}

void ReplicaServer::install_routes() {
  http_->Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  http_->Get("/readyz", [this](const httplib::Request&, httplib::Response& res) {
    if (ready_ && !draining_) {
      res.set_content("ready\n", "text/plain");
    } else {
      res.status = 503;
      res.set_content(draining_ ? "draining\n" : "loading weights\n", "text/plain");
    }
  });
  http_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_.render(live()), "text/plain; version=0.0.4; charset=utf-8");
  });
  http_->Post("/v1/predict", [this](const httplib::Request& req, httplib::Response& res) {
    const auto start = Clock::now();
    in_flight_.fetch_add(1);
    auto [status, body] = predict(req.body);
    in_flight_.fetch_sub(1);
    res.status = status;
    if (status == 503) res.set_header("Retry-After", std::to_string(options_.retry_after_s));
    res.set_content(body, kJson);
    metrics_.count_response(status);
    if (status == 200) {
      metrics_.observe_request(std::chrono::duration<double>(Clock::now() - start).count());
    }
  });
}

void ReplicaServer::drain() {
  std::call_once(drained_, [this] {
    draining_ = true;  // readiness off, new requests refused with 503
    Batcher* batcher;
    {
      std::lock_guard<std::mutex> lock(mu_);
      batcher = batcher_.get();
    }
    if (batcher != nullptr) batcher->drain();  // answers every queued request
    // Handlers still writing their responses finish before stop() returns
    // from joining httplib's pool; keep-alive loops end after their request.
    http_->stop();
    if (http_thread_.joinable()) http_thread_.join();
  });
}

}  // namespace kiln::serve
