#include "kiln/store/etcd/testing/etcd_server.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "kiln/base/fd.h"
#include "kiln/base/socket.h"
#include "kiln/store/etcd/http_client.h"

namespace kiln::store::etcd::testing {
namespace {

namespace fs = std::filesystem;

// How often readiness and exit are polled.
constexpr auto kPoll = std::chrono::milliseconds(10);

std::string find_on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    if (dir.empty()) continue;
    std::string candidate = dir + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

Result<std::uint16_t> free_port() {
  std::uint16_t port = 0;
  // The socket closes at once; etcd binds the port moments later. Another
  // process may take it in between: start() then tries fresh ports.
  KILN_ASSIGN_OR_RETURN(Fd fd, net::listen_tcp("127.0.0.1", 0, 1, &port));
  return port;
}

std::string scratch_parent() {
  std::error_code ec;
  if (fs::is_directory("/dev/shm", ec) && ::access("/dev/shm", W_OK) == 0) return "/dev/shm";
  const char* tmp = std::getenv("TMPDIR");
  return tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
}

}  // namespace

bool EtcdServer::installed() { return !find_on_path("etcd").empty(); }

Result<std::unique_ptr<EtcdServer>> EtcdServer::start(Deadline deadline) {
  std::string binary = find_on_path("etcd");
  if (binary.empty()) return failed_precondition(kNotInstalled);
  std::unique_ptr<EtcdServer> server(new EtcdServer());
  server->binary_ = binary;
  std::string tmpl = scratch_parent() + "/kiln_etcd_XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) return errno_status("mkdtemp " + tmpl, errno);
  server->dir_ = tmpl;
  Status last;
  for (int attempt = 0; attempt < 3 && !deadline.expired(); ++attempt) {
    KILN_ASSIGN_OR_RETURN(server->client_port_, free_port());
    KILN_ASSIGN_OR_RETURN(server->peer_port_, free_port());
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

std::string EtcdServer::log_tail() const {
  std::ifstream in(dir_ + "/etcd.log");
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  constexpr std::size_t kTail = 2000;
  return all.size() > kTail ? all.substr(all.size() - kTail) : all;
}

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
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string log = dir_ + "/etcd.log";
  int log_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return errno_status("open " + log, errno);
  int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) {
    int err = errno;
    ::close(log_fd);
    if (null_fd >= 0) ::close(null_fd);
    return errno_status("fork for etcd", err);
  }
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    if (null_fd >= 0) ::dup2(null_fd, 0);
    ::dup2(log_fd, 1);
    ::dup2(log_fd, 2);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(log_fd);
  if (null_fd >= 0) ::close(null_fd);
  pid_ = pid;
  return Status::ok();
}

Status EtcdServer::wait_healthy(Deadline deadline) {
  HttpClient http;
  const std::string url = fmt::format("http://127.0.0.1:{}/health", client_port_);
  std::string last = "no answer yet";
  while (true) {
    int wstatus = 0;
    if (::waitpid(pid_, &wstatus, WNOHANG) == pid_) {
      pid_ = -1;
      return unavailable(fmt::format("etcd exited ({}) before it was healthy; its log:\n{}",
                                     WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1, log_tail()));
    }
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
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

}  // namespace kiln::store::etcd::testing
