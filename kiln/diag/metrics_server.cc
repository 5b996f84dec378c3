#include "kiln/diag/metrics_server.h"

#include <fmt/format.h>
#include <httplib.h>

#include <chrono>
#include <thread>

namespace kiln::diag {
namespace {

void series(std::string* out, const char* name, const char* type, const char* help,
            const std::string& labels, double value) {
  *out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{}{{{}}} {:.9g}\n", name, help, name, type, name,
                      labels, value);
}

}  // namespace

void MetricsSnapshot::update(const StepRecord& r) {
  ++steps;
  last = r;
  last.spans.clear();
  step_s_total += r.step_s;
  for (int i = 0; i < kPhaseCount; ++i) phase_s_total[i] += r.phase_s[i];
  samples_total += static_cast<double>(r.samples);
  comm_bytes_total += static_cast<double>(r.comm_bytes);
  comm_s_total += r.comm_s;
}

std::string MetricsSnapshot::render() const {
  std::string out;
  const std::string rl = fmt::format("rank=\"{}\"", rank);
  series(&out, "kiln_steps_total", "counter", "Training steps completed.", rl,
         static_cast<double>(steps));
  series(&out, "kiln_step_seconds", "gauge", "Wall time of the newest step.", rl, last.step_s);
  series(&out, "kiln_step_seconds_total", "counter", "Wall time of all steps.", rl, step_s_total);
  out +=
      "# HELP kiln_phase_seconds Exclusive seconds per phase in the newest step.\n"
      "# TYPE kiln_phase_seconds gauge\n";
  for (int i = 0; i < kPhaseCount; ++i) {
    out += fmt::format("kiln_phase_seconds{{{},phase=\"{}\"}} {:.9g}\n", rl,
                       phase_name(static_cast<Phase>(i)), last.phase_s[i]);
  }
  out +=
      "# HELP kiln_phase_seconds_total Exclusive seconds per phase over all steps.\n"
      "# TYPE kiln_phase_seconds_total counter\n";
  for (int i = 0; i < kPhaseCount; ++i) {
    out += fmt::format("kiln_phase_seconds_total{{{},phase=\"{}\"}} {:.9g}\n", rl,
                       phase_name(static_cast<Phase>(i)), phase_s_total[i]);
  }
  series(&out, "kiln_samples_per_second", "gauge", "Samples per second in the newest step.", rl,
         last.step_s > 0 ? static_cast<double>(last.samples) / last.step_s : 0);
  series(&out, "kiln_samples_total", "counter", "Samples trained on.", rl, samples_total);
  series(&out, "kiln_comm_bytes_total", "counter", "Gradient bytes synchronised.", rl,
         comm_bytes_total);
  series(&out, "kiln_comm_bandwidth_bytes_per_second", "gauge",
         "Gradient sync bytes over its duration in the newest step (0: unknown).", rl,
         last.comm_s > 0 ? static_cast<double>(last.comm_bytes) / last.comm_s : 0);
  series(&out, "kiln_loader_wait_seconds", "gauge", "Data wait of the newest step.", rl,
         last[Phase::kDataWait]);
  series(&out, "kiln_loader_cache_hit_ratio", "gauge", "Loader shard cache hit rate (-1: unknown).",
         rl, last.cache_hit_rate);
  series(&out, "kiln_checkpoint_stall_seconds", "gauge", "Checkpoint stall of the newest step.", rl,
         last[Phase::kCheckpointStall]);
  series(&out, "kiln_loss", "gauge", "Training loss of the newest step.", rl, last.loss);
  return out;
}

MetricsServer::MetricsServer(int rank) : server_(std::make_unique<httplib::Server>()) {
  snapshot_.rank = rank;
}

Result<std::unique_ptr<MetricsServer>> MetricsServer::start(const std::string& host, int port,
                                                            int rank) {
  std::unique_ptr<MetricsServer> s(new MetricsServer(rank));
  MetricsServer* self = s.get();
  // httplib's default adds SO_REUSEPORT, which lets a second server bind a
  // port in use and steal half its scrapes: a busy port must be an error.
  s->server_->set_socket_options([](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  s->server_->Get("/metrics", [self](const httplib::Request&, httplib::Response& res) {
    res.set_content(self->render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  if (port == 0) {
    s->port_ = s->server_->bind_to_any_port(host);
    if (s->port_ <= 0) return unavailable(fmt::format("metrics endpoint: cannot bind {}:0", host));
  } else {
    if (!s->server_->bind_to_port(host, port)) {
      return unavailable(fmt::format(
          "metrics endpoint: cannot bind {}:{} (in use? local rank r serves on --metrics-port + r)",
          host, port));
    }
    s->port_ = port;
  }
  s->thread_ = std::thread([self] { self->server_->listen_after_bind(); });
  // Until its loop runs, httplib's stop() is a no-op and the destructor's
  // join would wait forever: return only once it is serving. httplib has
  // no readiness callback, so poll its flag, bounded.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!s->server_->is_running()) {
    if (std::chrono::steady_clock::now() > deadline) {
      s->server_->stop();
      return unavailable(
          fmt::format("metrics endpoint {}:{}: server did not start within 10 s", host, s->port_));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return s;
}

MetricsServer::~MetricsServer() {
  server_->stop();
  if (thread_.joinable()) thread_.join();
}

void MetricsServer::record_step(const StepRecord& r) {
  std::lock_guard<std::mutex> lock(mu_);
  snapshot_.update(r);
}

std::string MetricsServer::render() const {
  MetricsSnapshot copy;
  {
    std::lock_guard<std::mutex> lock(mu_);
    copy = snapshot_;
  }
  return copy.render();
}

}  // namespace kiln::diag
