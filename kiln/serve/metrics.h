// What a replica exports on /metrics (Prometheus text format 0.0.4; the
// series are listed in docs/serve.md). Counters and histograms are updated
// from the HTTP threads and the batch worker; render() takes a consistent
// enough copy (each series is read once; Prometheus tolerates skew between
// series).
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "kiln/serve/batcher.h"

namespace kiln::serve {

// A Prometheus histogram with fixed upper bounds. Thread-safe.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double value);
  void observe_n(double value, std::uint64_t n);  // n observations of `value`
  // `name` with _bucket{le=...}, _sum and _count lines, after HELP and TYPE.
  void render(std::string* out, const std::string& name, const std::string& help) const;
  std::uint64_t count() const;

 private:
  std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::vector<std::uint64_t> counts_;  // GUARDED_BY(mu_); one per bound, plus +Inf
  double sum_ = 0;                     // GUARDED_BY(mu_)
  std::uint64_t total_ = 0;            // GUARDED_BY(mu_)
};

// Gauges the server reads at render time (queue length, in flight).
struct LiveGauges {
  std::size_t queue_length = 0;
  std::size_t in_flight = 0;  // accepted and not yet answered (queued + running)
  bool ready = false;
};

class ServeMetrics : public BatchObserver {
 public:
  ServeMetrics();

  void on_batch(const BatchRun& run) override;
  void observe_request(double latency_seconds) { latency_.observe(latency_seconds); }
  void count_response(int http_status);
  void set_cold_start(double fetch_seconds, double load_seconds, bool cache_hit);

  std::string render(const LiveGauges& live) const;

  std::uint64_t requests_ok() const { return ok_.load(); }
  std::uint64_t rejected_overload() const { return overload_.load(); }

 private:
  Histogram batch_size_;
  Histogram batch_seconds_;
  Histogram queue_wait_;  // per request, summed per batch: its _sum and _count
  Histogram latency_;
  std::atomic<std::uint64_t> batches_full_{0};
  std::atomic<std::uint64_t> ok_{0}, client_errors_{0}, overload_{0}, server_errors_{0};
  mutable std::mutex cold_mu_;
  double fetch_s_ = -1, load_s_ = -1;  // GUARDED_BY(cold_mu_); -1 until loaded
  bool cache_hit_ = false;             // GUARDED_BY(cold_mu_)
};

}  // namespace kiln::serve
