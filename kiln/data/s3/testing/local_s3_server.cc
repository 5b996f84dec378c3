#include "kiln/data/s3/testing/local_s3_server.h"

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
#include "kiln/data/s3/s3_object_store.h"

extern char** environ;

namespace kiln::data::s3::testing {
namespace {

namespace fs = std::filesystem;

constexpr auto kPoll = std::chrono::milliseconds(20);

bool executable(const std::string& p) { return !p.empty() && ::access(p.c_str(), X_OK) == 0; }

bool on_path(const std::string& name, std::string* found) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    if (!dir.empty() && executable(dir + "/" + name)) {
      *found = dir + "/" + name;
      return true;
    }
  }
  return false;
}

Result<std::uint16_t> free_port() {
  std::uint16_t port = 0;
  // Closed at once; s3rver binds it moments later. Should another process
  // take it in between, start() tries a fresh port.
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

std::string LocalS3Server::find_binary() {
  const char* env = std::getenv("KILN_S3RVER");
  if (env != nullptr && *env != '\0') return executable(env) ? env : "";
  std::string node;
  if (!on_path("node", &node)) return "";  // s3rver.js runs under node
#ifdef KILN_S3RVER_DEFAULT
  if (executable(KILN_S3RVER_DEFAULT)) return KILN_S3RVER_DEFAULT;
#endif
  std::string found;
  return on_path("s3rver", &found) ? found : "";
}

Result<std::unique_ptr<LocalS3Server>> LocalS3Server::start(std::string bucket, Deadline deadline) {
  std::string binary = find_binary();
  if (binary.empty()) return failed_precondition(kNotInstalled);
  std::unique_ptr<LocalS3Server> server(new LocalS3Server());
  server->binary_ = binary;
  server->bucket_ = std::move(bucket);
  std::string tmpl = scratch_parent() + "/kiln_s3rver_XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) return errno_status("mkdtemp " + tmpl, errno);
  server->dir_ = tmpl;
  Status last;
  for (int attempt = 0; attempt < 3 && !deadline.expired(); ++attempt) {
    KILN_ASSIGN_OR_RETURN(server->port_, free_port());
    KILN_RETURN_IF_ERROR(server->spawn());
    last = server->wait_ready(deadline);
    if (last.is_ok()) return server;
    server->kill();
  }
  return last.with_context("start s3rver");
}

LocalS3Server::~LocalS3Server() {
  kill();
  std::error_code ec;
  if (!dir_.empty()) fs::remove_all(dir_, ec);
}

std::string LocalS3Server::endpoint() const { return fmt::format("http://127.0.0.1:{}", port_); }

std::string LocalS3Server::url(const std::string& prefix) const {
  return prefix.empty() ? "s3://" + bucket_ : "s3://" + bucket_ + "/" + prefix;
}

S3Options LocalS3Server::options() const {
  S3Options o;
  o.endpoint = endpoint();
  o.region = "us-east-1";
  o.access_key_id = "S3RVER";
  o.secret_access_key = "S3RVER";
  o.connect_timeout_ms = 1000;
  o.request_timeout_ms = 20000;
  o.stall_timeout_ms = 5000;
  o.max_attempts = 4;
  o.backoff_base_ms = 20;
  o.backoff_cap_ms = 200;
  return o;
}

std::string LocalS3Server::log_tail() const {
  std::ifstream in(dir_ + "/s3rver.log");
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  constexpr std::size_t kTail = 2000;
  return all.size() > kTail ? all.substr(all.size() - kTail) : all;
}

Status LocalS3Server::spawn() {
  std::vector<std::string> args = {
      binary_,  "--directory",         dir_ + "/data",       "--address", "127.0.0.1",
      "--port", std::to_string(port_), "--configure-bucket", bucket_,     "--silent"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  // s3rver 3.7 does not start on Node 17+ without OpenSSL's legacy provider.
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::string(*e).rfind("NODE_OPTIONS=", 0) != 0) env_strings.emplace_back(*e);
  }
  env_strings.emplace_back("NODE_OPTIONS=--openssl-legacy-provider");
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);

  const std::string log = dir_ + "/s3rver.log";
  int log_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return errno_status("open " + log, errno);
  int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  const pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) {
    int err = errno;
    ::close(log_fd);
    if (null_fd >= 0) ::close(null_fd);
    return errno_status("fork for s3rver", err);
  }
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    if (null_fd >= 0) ::dup2(null_fd, 0);
    ::dup2(log_fd, 1);
    ::dup2(log_fd, 2);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  ::close(log_fd);
  if (null_fd >= 0) ::close(null_fd);
  pid_ = pid;
  return Status::ok();
}

Status LocalS3Server::wait_ready(Deadline deadline) {
  S3Options o = options();
  o.max_attempts = 1;
  o.connect_timeout_ms = 500;
  o.request_timeout_ms = 1000;
  auto store = S3ObjectStore::open(url(), o);
  if (!store) return store.status();
  Status last = unavailable("no answer yet");
  while (true) {
    int wstatus = 0;
    if (::waitpid(pid_, &wstatus, WNOHANG) == pid_) {
      pid_ = -1;
      return unavailable(fmt::format("s3rver exited ({}) before it answered; its log:\n{}",
                                     WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1, log_tail()));
    }
    auto listed = (*store)->list("", deadline.min(Deadline::after_seconds(1)));
    if (listed.is_ok()) return Status::ok();
    last = listed.status();
    if (deadline.expired()) {
      return deadline_exceeded(
          fmt::format("s3rver on {} not answering in time (last: {}); its "
                      "log:\n{}",
                      endpoint(), last.to_string(), log_tail()));
    }
    std::this_thread::sleep_for(kPoll);
  }
}

Status LocalS3Server::restart(Deadline deadline) {
  kill();
  KILN_RETURN_IF_ERROR(spawn());
  return wait_ready(deadline).with_context("restart s3rver");
}

void LocalS3Server::kill() {
  if (pid_ <= 0) return;
  ::kill(pid_, SIGKILL);
  ::waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

}  // namespace kiln::data::s3::testing
