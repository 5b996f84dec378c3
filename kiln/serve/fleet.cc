#include "kiln/serve/fleet.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <thread>

#include "kiln/base/deadline.h"
#include "kiln/base/fd.h"
#include "kiln/base/logging.h"

namespace kiln::serve {
namespace {

// One replica process: its output comes through a pipe, line by line, to
// our stdout with a prefix; the "listening on HOST:PORT" line gives its port.
struct Proc {
  int id = 0;
  pid_t pid = -1;
  std::atomic<int> port{0};
  std::thread reader;  // job: forwards the replica's output, finds its port
  Clock::time_point spawned;
  bool ready = false;     // in the router
  bool draining = false;  // SIGTERM sent
};

Result<std::unique_ptr<Proc>> spawn(const FleetOptions& o, int id) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return errno_status("pipe for a replica", errno);
  Fd read_end(fds[0]), write_end(fds[1]);
  std::vector<std::string> args = {o.exe, "serve"};
  args.insert(args.end(), o.replica_args.begin(), o.replica_args.end());
  args.insert(args.end(), {"--port", "0", "--host", "127.0.0.1"});
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) return errno_status("fork a replica", errno);
  if (pid == 0) {
    ::dup2(write_end.get(), STDOUT_FILENO);
    ::dup2(write_end.get(), STDERR_FILENO);
    // Not the router's sockets: a replica holding a client connection open
    // would keep it from closing when the router is done with it.
    ::close_range(3, ~0u, 0);
    // The fleet blocked these for its sigwait; a replica needs its own.
    sigset_t none;
    sigemptyset(&none);
    ::pthread_sigmask(SIG_SETMASK, &none, nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  write_end.reset();  // the replica holds it: its exit ends the reader's read
  auto p = std::make_unique<Proc>();
  p->id = id;
  p->pid = pid;
  p->spawned = Clock::now();
  Proc* raw = p.get();
  p->reader = std::thread([raw, fd = std::move(read_end)] {
    std::string pending;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fd.get(), buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR)) {
      if (n <= 0) continue;
      pending.append(buf, static_cast<std::size_t>(n));
      std::size_t nl;
      while ((nl = pending.find('\n')) != std::string::npos) {
        std::string line = pending.substr(0, nl);
        pending.erase(0, nl + 1);
        auto at = line.find("listening on ");
        if (at != std::string::npos && raw->port == 0) {
          auto colon = line.rfind(':');
          raw->port = std::atoi(line.c_str() + colon + 1);
        }
        std::fprintf(stdout, "[replica %d] %s\n", raw->id, line.c_str());
        std::fflush(stdout);
      }
    }
  });
  return p;
}

bool probe_ready(int port) {
  httplib::Client c("127.0.0.1", port);
  c.set_connection_timeout(std::chrono::milliseconds(500));
  c.set_read_timeout(std::chrono::milliseconds(500));
  auto r = c.Get("/readyz");
  return r && r->status == 200;
}

class Controller {
 public:
  Controller(const FleetOptions& o, Router* router)
      : o_(o), router_(router), autoscaler_(o.autoscaler), start_(Clock::now()) {
    if (!o.decision_log.empty()) log_.open(o.decision_log, std::ios::app);
  }

  double now_s() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

  Status scale_to(int n) {
    while (alive() < n) {
      KILN_ASSIGN_OR_RETURN(auto p, spawn(o_, next_id_++));
      log()->info("fleet: started replica {} (pid {})", p->id, p->pid);
      procs_[p->id] = std::move(p);
    }
    // Scale down: the newest first (the least likely to hold a warm cache of
    // anything), out of the router before it is told to drain.
    for (auto it = procs_.rbegin(); it != procs_.rend() && alive() > n; ++it) {
      Proc& p = *it->second;
      if (p.draining) continue;
      router_->remove_replica(p.id);
      p.draining = true;
      ::kill(p.pid, SIGTERM);
      log()->info("fleet: draining replica {} (pid {})", p.id, p.pid);
    }
    return Status::ok();
  }

  // Reaps exited replicas; an exit we did not ask for is a death.
  void reap() {
    for (auto it = procs_.begin(); it != procs_.end();) {
      Proc& p = *it->second;
      int status = 0;
      if (::waitpid(p.pid, &status, WNOHANG) != p.pid) {
        ++it;
        continue;
      }
      router_->remove_replica(p.id);
      if (!p.draining) {
        log()->warn(
            "fleet: replica {} (pid {}) died ({}); its in-flight requests are retried "
            "on the others; starting a replacement",
            p.id, p.pid,
            WIFSIGNALED(status) ? fmt::format("signal {}", WTERMSIG(status))
                                : fmt::format("exit {}", WEXITSTATUS(status)));
        write_line(nlohmann_line(p.id, "replica died", status));
      }
      p.reader.join();
      it = procs_.erase(it);
    }
  }

  void admit_ready() {
    for (auto& [id, p] : procs_) {
      if (p->ready || p->draining || p->port == 0) continue;
      if (probe_ready(p->port)) {
        p->ready = true;
        router_->add_replica(id, p->port);
        const double s = std::chrono::duration<double>(Clock::now() - p->spawned).count();
        log()->info("fleet: replica {} ready on port {} after {:.2f} s", id, p->port.load(), s);
        write_line(
            fmt::format(R"({{"time": {:.3f}, "event": "ready", "replica": {}, "start_s": {:.3f}}})",
                        now_s(), id, s));
      } else if (std::chrono::duration<double>(Clock::now() - p->spawned).count() >
                 o_.replica_start_timeout_s) {
        log()->warn("fleet: replica {} not ready after {} s; stopping it", id,
                    o_.replica_start_timeout_s);
        p->draining = true;
        ::kill(p->pid, SIGKILL);
      }
    }
  }

  Status tick(double metric) {
    reap();
    admit_ready();
    Decision d = autoscaler_.decide(now_s(), alive(), metric);
    write_line(d.to_json());
    return scale_to(d.desired);
  }

  int alive() const {
    int n = 0;
    for (const auto& [id, p] : procs_) n += p->draining ? 0 : 1;
    return n;
  }

  // Every replica drains; bounded, then SIGKILL.
  void stop_all() {
    for (auto& [id, p] : procs_) {
      router_->remove_replica(id);
      if (!p->draining) ::kill(p->pid, SIGTERM);
      p->draining = true;
    }
    const Deadline deadline = Deadline::after_seconds(60);
    while (!procs_.empty()) {
      reap();
      if (deadline.expired()) {
        for (auto& [id, p] : procs_) ::kill(p->pid, SIGKILL);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

 private:
  std::string nlohmann_line(int id, const char* what, int status) {
    return fmt::format(R"({{"time": {:.3f}, "event": "{}", "replica": {}, "wait_status": {}}})",
                       now_s(), what, id, status);
  }
  void write_line(const std::string& line) {
    if (log_.is_open()) {
      log_ << line << "\n";
      log_.flush();
    }
  }

  const FleetOptions& o_;
  Router* router_;
  Autoscaler autoscaler_;
  Clock::time_point start_;
  std::ofstream log_;
  std::map<int, std::unique_ptr<Proc>> procs_;
  int next_id_ = 0;
};

}  // namespace

Status run_fleet(const FleetOptions& o) {
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  ::pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  KILN_ASSIGN_OR_RETURN(auto router, Router::start(o.router));
  std::printf("listening on %s:%d (router; replicas %d..%d, target queue %g per replica)\n",
              o.router.host.c_str(), router->port(), o.autoscaler.min_replicas,
              o.autoscaler.max_replicas, o.autoscaler.target);
  std::fflush(stdout);
  Controller c(o, router.get());
  KILN_RETURN_IF_ERROR(c.scale_to(o.autoscaler.min_replicas));

  // Sample the queue every 50 ms; decide once per sync period on its mean.
  const auto sample = std::chrono::milliseconds(50);
  double sum = 0;
  int samples = 0;
  auto next_sync = Clock::now() + o.sync_period;
  while (true) {
    struct timespec ts = {0, std::chrono::nanoseconds(sample).count()};
    const int sig = ::sigtimedwait(&stop_signals, nullptr, &ts);
    if (sig == SIGTERM || sig == SIGINT) break;
    sum += static_cast<double>(router->outstanding());
    ++samples;
    if (Clock::now() >= next_sync) {
      KILN_RETURN_IF_ERROR(c.tick(samples > 0 ? sum / samples : 0));
      sum = 0;
      samples = 0;
      next_sync += o.sync_period;
      if (next_sync < Clock::now()) next_sync = Clock::now() + o.sync_period;
    } else {
      c.reap();
      c.admit_ready();
    }
  }
  log()->info("fleet: stopping: the router answers what it accepted, then the replicas drain");
  router->stop();
  c.stop_all();
  std::printf("fleet stopped: %llu requests, %llu retried attempts, %llu failed\n",
              static_cast<unsigned long long>(router->requests()),
              static_cast<unsigned long long>(router->retries()),
              static_cast<unsigned long long>(router->failed()));
  std::fflush(stdout);
  return Status::ok();
}

}  // namespace kiln::serve
