#include "kiln/serve/server.h"

#include <fmt/format.h>

#include <chrono>

#include "kiln/base/check.h"
#include "kiln/base/logging.h"
#include "kiln/serve/request.h"

namespace kiln::serve {
namespace {

constexpr char kText[] = "text/plain";

}  // namespace

ReplicaServer::ReplicaServer(const ReplicaOptions& options) : options_(options) {}

Result<std::unique_ptr<ReplicaServer>> ReplicaServer::start(const ReplicaOptions& options) {
  std::unique_ptr<ReplicaServer> s(new ReplicaServer(options));
  ReplicaServer* self = s.get();
  KILN_ASSIGN_OR_RETURN(s->front_, EventFront::bind({.host = options.host,
                                                     .port = options.port,
                                                     .what = "serve",
                                                     .read_timeout = options.read_timeout,
                                                     .cpus = options.front_cpus},
                                                    [self](std::vector<IncomingRequest>& requests) {
                                                      self->handle(requests);
                                                    }));
  s->port_ = s->front_->port();
  s->front_->serve();  // front_ is set: handle() may answer through it
  return s;
}

ReplicaServer::~ReplicaServer() { drain(); }

void ReplicaServer::set_model(std::unique_ptr<Model> model) {
  std::lock_guard<std::mutex> lock(mu_);
  KILN_CHECK_MSG(model_ == nullptr, "ReplicaServer::set_model called twice");
  model_ = std::move(model);
  Model* m = model_.get();
  batcher_ = std::make_unique<Batcher>(
      options_.batcher, [m](std::vector<Input>& batch) { return m->run(batch); }, &metrics_,
      [this](std::vector<std::pair<PredictTag, Result<Output>>>& done) { complete(done); });
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

HttpAnswer ReplicaServer::unavailable(const std::string& message) const {
  return {.status = 503, .body = error_json(message), .retry_after_s = options_.retry_after_s};
}

HttpAnswer ReplicaServer::route(const HttpRequest& r) {
  const bool get = r.method == "GET";
  if (r.target == "/healthz" && get) return {.content_type = kText, .body = "ok\n"};
  if (r.target == "/readyz" && get) {
    if (ready_ && !draining_) return {.content_type = kText, .body = "ready\n"};
    return {.status = 503,
            .content_type = kText,
            .body = draining_ ? "draining\n" : "loading weights\n"};
  }
  if (r.target == "/metrics" && get) {
    return {.content_type = "text/plain; version=0.0.4; charset=utf-8",
            .body = metrics_.render(live())};
  }
  return unrouted_answer(r);
}

void ReplicaServer::handle(std::vector<IncomingRequest>& requests) {
  Batcher* batcher;
  Model* model;
  {
    std::lock_guard<std::mutex> lock(mu_);
    batcher = batcher_.get();
    model = model_.get();
  }
  std::vector<std::pair<RequestTicket, HttpAnswer>> answers;
  std::vector<std::pair<PredictTag, Input>> predictions;
  auto refuse = [&](RequestTicket ticket, HttpAnswer a) {
    metrics_.count_response(a.status);
    answers.emplace_back(ticket, std::move(a));
  };
  for (IncomingRequest& in : requests) {
    if (in.request.target != "/v1/predict" || in.request.method != "POST") {
      answers.emplace_back(in.ticket, route(in.request));
      continue;
    }
    if (draining_) {
      refuse(in.ticket, unavailable("draining (SIGTERM): send this request to another replica"));
      continue;
    }
    if (batcher == nullptr) {
      refuse(in.ticket, unavailable("not ready: the weights are still loading"));
      continue;
    }
    Result<Input> input = parse_request(in.request.body, model->info());
    if (!input.is_ok()) {
      refuse(in.ticket, {.status = 400, .body = error_json(input.status().message())});
      continue;
    }
    const int max_new_tokens = input->max_new_tokens;
    predictions.emplace_back(PredictTag{in.ticket, in.received, max_new_tokens},
                             std::move(input).value());
  }
  if (!predictions.empty()) {
    // The whole wake-up's predictions in one submission.
    in_flight_.fetch_add(predictions.size());
    const auto admitted = batcher->submit_all(predictions);
    in_flight_.fetch_sub(predictions.size() - admitted.accepted);
    for (std::size_t i = admitted.accepted; i < predictions.size(); ++i) {
      refuse(predictions[i].first.ticket, unavailable(admitted.refused.message()));
    }
  }
  front_->answer(std::move(answers));
}

void ReplicaServer::complete(std::vector<std::pair<PredictTag, Result<Output>>>& done) {
  const ModelInfo& info = model_->info();  // immutable once the batcher exists
  const auto now = Clock::now();
  std::vector<std::pair<RequestTicket, HttpAnswer>> answers;
  answers.reserve(done.size());
  for (auto& [tag, out] : done) {
    HttpAnswer a;
    if (out.is_ok()) {
      Input shape;
      shape.max_new_tokens = tag.max_new_tokens;
      a.body = response_json(shape, *out, info);
      metrics_.observe_request(std::chrono::duration<double>(now - tag.received).count());
    } else {
      a.status = 500;
      a.body = error_json(out.status().to_string());
    }
    metrics_.count_response(a.status);
    answers.emplace_back(tag.ticket, std::move(a));
  }
  in_flight_.fetch_sub(done.size());
  front_->answer(std::move(answers));  // one hand-off for the batch
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
    // Writes the answers to every request read, then closes.
    front_->stop();
  });
}

}  // namespace kiln::serve
