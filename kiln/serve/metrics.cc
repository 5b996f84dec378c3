#include "kiln/serve/metrics.h"

#include <fmt/format.h>

#include <algorithm>

namespace kiln::serve {
namespace {

void series(std::string* out, const std::string& name, const char* type, const char* help,
            double value) {
  *out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, help, name, type, name, value);
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::observe(double value) { observe_n(value, 1); }

void Histogram::observe_n(double value, std::uint64_t n) {
  const auto i = static_cast<std::size_t>(std::lower_bound(bounds_.begin(), bounds_.end(), value) -
                                          bounds_.begin());
  std::lock_guard<std::mutex> lock(mu_);
  counts_[i] += n;
  sum_ += value * static_cast<double>(n);
  total_ += n;
}

std::uint64_t Histogram::count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return total_;
}

void Histogram::render(std::string* out, const std::string& name, const std::string& help) const {
  std::vector<std::uint64_t> counts;
  double sum;
  std::uint64_t total;
  {
    std::lock_guard<std::mutex> lock(mu_);
    counts = counts_;
    sum = sum_;
    total = total_;
  }
  *out += fmt::format("# HELP {} {}\n# TYPE {} histogram\n", name, help, name);
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts[i];
    *out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, bounds_[i], cumulative);
  }
  *out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, total, name,
                      sum, name, total);
}

ServeMetrics::ServeMetrics()
    : batch_size_({1, 2, 4, 8, 16, 32, 64, 128, 256}),
      batch_seconds_({0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1}),
      queue_wait_({0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1}),
      latency_({0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5}) {}

void ServeMetrics::on_batch(const BatchRun& run) {
  batch_size_.observe(static_cast<double>(run.size));
  batch_seconds_.observe(run.run_seconds);
  // A batch's mean wait, once per request: the sum and count are exact, the
  // buckets place every request of a batch at its batch's mean.
  if (run.size > 0) {
    queue_wait_.observe_n(run.queue_wait_sum_s / static_cast<double>(run.size), run.size);
  }
  if (run.full) batches_full_.fetch_add(1);
}

void ServeMetrics::count_response(int http_status) {
  if (http_status < 400) {
    ok_.fetch_add(1);
  } else if (http_status == 503) {
    overload_.fetch_add(1);
  } else if (http_status < 500) {
    client_errors_.fetch_add(1);
  } else {
    server_errors_.fetch_add(1);
  }
}

void ServeMetrics::set_cold_start(double fetch_seconds, double load_seconds, bool cache_hit) {
  std::lock_guard<std::mutex> lock(cold_mu_);
  fetch_s_ = fetch_seconds;
  load_s_ = load_seconds;
  cache_hit_ = cache_hit;
}

std::string ServeMetrics::render(const LiveGauges& live) const {
  std::string out;
  series(&out, "kiln_serve_queue_length", "gauge",
         "Requests waiting for a batch (the autoscaling metric).",
         static_cast<double>(live.queue_length));
  series(&out, "kiln_serve_in_flight", "gauge", "Requests accepted and not yet answered.",
         static_cast<double>(live.in_flight));
  series(&out, "kiln_serve_ready", "gauge", "1 once the weights are loaded.", live.ready ? 1 : 0);
  out +=
      "# HELP kiln_serve_responses_total Responses by class.\n"
      "# TYPE kiln_serve_responses_total counter\n";
  out += fmt::format("kiln_serve_responses_total{{class=\"ok\"}} {}\n", ok_.load());
  out += fmt::format("kiln_serve_responses_total{{class=\"client_error\"}} {}\n",
                     client_errors_.load());
  out += fmt::format("kiln_serve_responses_total{{class=\"overload\"}} {}\n", overload_.load());
  out += fmt::format("kiln_serve_responses_total{{class=\"server_error\"}} {}\n",
                     server_errors_.load());
  batch_size_.render(&out, "kiln_serve_batch_size", "Requests per forward pass.");
  batch_seconds_.render(&out, "kiln_serve_batch_seconds", "Forward pass time per batch.");
  series(&out, "kiln_serve_batches_full_total", "counter",
         "Batches that ran with max_batch requests (the rest closed at max_queue_delay).",
         static_cast<double>(batches_full_.load()));
  queue_wait_.render(&out, "kiln_serve_queue_seconds",
                     "Time a request waited for its batch to start (each batch's mean).");
  latency_.render(&out, "kiln_serve_request_seconds",
                  "Time from a request's arrival to its answer (queue + batch).");
  double fetch, load;
  bool hit;
  {
    std::lock_guard<std::mutex> lock(cold_mu_);
    fetch = fetch_s_;
    load = load_s_;
    hit = cache_hit_;
  }
  if (load >= 0) {
    series(&out, "kiln_serve_cold_start_seconds", "gauge",
           "Weights fetched (or found in the node cache) plus loaded.", fetch + load);
    series(&out, "kiln_serve_cold_start_fetch_seconds", "gauge",
           "Weights from the object store into the node cache (0 on a hit).", fetch);
    series(&out, "kiln_serve_cold_start_load_seconds", "gauge",
           "Weights from the node cache into the model.", load);
    series(&out, "kiln_serve_weight_cache_hit", "gauge",
           "1 when the node cache already held the weights.", hit ? 1 : 0);
  }
  return out;
}

}  // namespace kiln::serve
