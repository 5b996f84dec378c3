#include "kiln/store/etcd/testing/etcd_server.h"

#include <fmt/format.h>

#include <filesystem>
#include <thread>
#include <vector>

#include "kiln/base/socket.h"
#include "kiln/store/etcd/http_client.h"

namespace kiln::store::etcd::testing {
namespace {

namespace fs = std::filesystem;

// How often readiness and exit are polled.
constexpr auto kPoll = std::chrono::milliseconds(10);

}  // namespace

bool EtcdServer::installed() { return !kiln::testing::find_on_path("etcd").empty(); }

Result<std::unique_ptr<EtcdServer>> EtcdServer::start(Deadline deadline) {
  std::string binary = kiln::testing::find_on_path("etcd");
  if (binary.empty()) return failed_precondition(kNotInstalled);
  std::unique_ptr<EtcdServer> server(new EtcdServer());
  server->binary_ = binary;
  KILN_ASSIGN_OR_RETURN(server->dir_, kiln::testing::make_scratch_dir("kiln_etcd_"));
  server->process_ =
      std::make_unique<kiln::testing::ServerProcess>("etcd", server->dir_ + "/etcd.log");
  Status last;
  for (int attempt = 0; attempt < 3 && !deadline.expired(); ++attempt) {
    KILN_ASSIGN_OR_RETURN(server->client_port_, kiln::testing::free_loopback_port());
    KILN_ASSIGN_OR_RETURN(server->peer_port_, kiln::testing::free_loopback_port());
    KILN_RETURN_IF_ERROR(server->spawn());
    last = server->wait_healthy(deadline);
    if (last.is_ok()) return server;
    server->crash();
    std::error_code ec;
    fs::remove_all(fs::path(server->dir_) / "data", ec);
  }
  return last.with_context("start etcd");
}

EtcdServer::~EtcdServer() {
  crash();
  std::error_code ec;
  if (!dir_.empty()) fs::remove_all(dir_, ec);
}

std::string EtcdServer::endpoint() const { return net::host_port("127.0.0.1", client_port_); }

std::string EtcdServer::log_tail() const { return process_ ? process_->log_tail() : ""; }

Status EtcdServer::spawn() {
  const std::string client = fmt::format("http://127.0.0.1:{}", client_port_);
  const std::string peer = fmt::format("http://127.0.0.1:{}", peer_port_);
  std::vector<std::string> args = {binary_,
                                   "--name=kiln-test",
                                   "--data-dir=" + dir_ + "/data",
                                   "--listen-client-urls=" + client,
                                   "--advertise-client-urls=" + client,
                                   "--listen-peer-urls=" + peer,
                                   "--initial-advertise-peer-urls=" + peer,
                                   "--initial-cluster=kiln-test=" + peer,
                                   "--heartbeat-interval=20",
                                   "--election-timeout=200",
                                   "--logger=zap",
                                   "--log-level=warn"};
  return process_->spawn(args);
}

Status EtcdServer::wait_healthy(Deadline deadline) {
  HttpClient http;
  const std::string url = fmt::format("http://127.0.0.1:{}/health", client_port_);
  std::string last = "no answer yet";
  while (true) {
    Status alive = process_->check_running();
    if (!alive.is_ok()) return alive.with_context("etcd exited before it was healthy");
    HttpExchange ex = http.get(url, deadline.min(Deadline::after(std::chrono::seconds(1))));
    if (ex.outcome == HttpExchange::Outcome::kReplied && ex.http_status == 200 &&
        ex.body.find("\"health\":\"true\"") != std::string::npos) {
      return Status::ok();
    }
    last = ex.outcome == HttpExchange::Outcome::kReplied
               ? fmt::format("HTTP {}: {}", ex.http_status, ex.body)
               : ex.error;
    if (deadline.expired()) {
      return deadline_exceeded(fmt::format(
          "etcd on {} not healthy in time (last: {}); its log:\n{}", endpoint(), last, log_tail()));
    }
    std::this_thread::sleep_for(kPoll);
  }
}

Status EtcdServer::restart(Deadline deadline) {
  crash();
  KILN_RETURN_IF_ERROR(spawn());
  return wait_healthy(deadline).with_context("restart etcd");
}

void EtcdServer::crash() {
  if (process_) process_->kill();
}

}  // namespace kiln::store::etcd::testing
