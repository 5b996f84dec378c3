// A Prometheus text endpoint (`kiln train --metrics-port P`): GET /metrics
// on each rank (local rank r listens on P + r) returns the newest step's
// phase seconds and running totals in the text exposition format 0.0.4
// (docs/diag.md lists the series). Served by cpp-httplib on its own thread.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "kiln/base/status.h"
#include "kiln/diag/step_timer.h"

namespace httplib {
class Server;
}

namespace kiln::diag {

// What /metrics reports; update() folds in each step.
struct MetricsSnapshot {
  int rank = 0;
  std::int64_t steps = 0;  // steps recorded so far
  StepRecord last;         // the newest step (spans unused)
  double step_s_total = 0;
  std::array<double, kPhaseCount> phase_s_total{};
  double samples_total = 0;
  double comm_bytes_total = 0;
  double comm_s_total = 0;

  void update(const StepRecord& r);
  // The exposition text.
  std::string render() const;
};

class MetricsServer {
 public:
  // Binds host:port (port 0: any free port) and serves on a thread of its
  // own. Unavailable naming host:port if it cannot bind.
  static Result<std::unique_ptr<MetricsServer>> start(const std::string& host, int port, int rank);
  ~MetricsServer();  // stops and joins
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // From the training thread, once per step; cheap (a copy under a lock).
  void record_step(const StepRecord& r);
  int port() const { return port_; }

 private:
  explicit MetricsServer(int rank);
  std::string render() const;

  std::unique_ptr<httplib::Server> server_;
  int port_ = 0;
  mutable std::mutex mu_;
  MetricsSnapshot snapshot_;  // GUARDED_BY(mu_)
  std::thread thread_;        // job: httplib's accept loop
};

}  // namespace kiln::diag
