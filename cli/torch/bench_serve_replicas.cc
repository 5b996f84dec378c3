#include "cli/torch/bench_serve_replicas.h"

#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "kiln/base/deadline.h"

namespace kiln::cli::bench_serve {

// The CPUs the bench may use when it starts; every replica gets them all,
// whatever the load generator's thread is bound to (--pin-load-gen).
const cpu_set_t& bench_cpus() {
  static const cpu_set_t set = [] {
    cpu_set_t s;
    CPU_ZERO(&s);
    if (::sched_getaffinity(0, sizeof s, &s) != 0) {
      for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) CPU_SET(cpu, &s);
    }
    return s;
  }();
  return set;
}

Result<Child> spawn_serve(const std::vector<std::string>& args, const std::string& out) {
  std::vector<std::string> all = {"/proc/self/exe", "serve"};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  const cpu_set_t& cpus = bench_cpus();
  pid_t pid = ::fork();
  if (pid < 0) return errno_status("fork kiln serve", errno);
  if (pid == 0) {
    ::sched_setaffinity(0, sizeof cpus, &cpus);
    FILE* f = std::freopen(out.c_str(), "w", stdout);
    if (f == nullptr) ::_exit(127);
    ::dup2(STDOUT_FILENO, STDERR_FILENO);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return Child{pid, out, 0};
}

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// Waits for `pattern` in the child's output; returns its first group.
Result<std::string> wait_for(const Child& c, const std::string& pattern, double timeout_s) {
  const Deadline d = Deadline::after_seconds(timeout_s);
  const std::regex re(pattern);
  while (!d.expired()) {
    std::smatch m;
    std::string text = slurp(c.out);
    if (std::regex_search(text, m, re)) return m[1].str();
    int status;
    if (::waitpid(c.pid, &status, WNOHANG) == c.pid) {
      return unavailable(fmt::format("kiln serve exited before '{}': {}", pattern, text));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return deadline_exceeded(fmt::format("kiln serve: no '{}' within {} s", pattern, timeout_s));
}

void stop(Child& c) {
  if (c.pid <= 0) return;
  ::kill(c.pid, SIGTERM);
  int status;
  ::waitpid(c.pid, &status, 0);
  c.pid = -1;
}

Result<Child> start_replica(const std::vector<std::string>& args, const std::string& out) {
  KILN_ASSIGN_OR_RETURN(Child c, spawn_serve(args, out));
  auto port = wait_for(c, "listening on [0-9.]+:([0-9]+)", 120);
  if (!port.is_ok()) {
    stop(c);
    return port.status();
  }
  c.port = std::stoi(*port);
  return c;
}

// The replica's "ready: ..." line: its cold start's parts.
std::string ready_line(const Child& c) {
  std::smatch m;
  const std::string text = slurp(c.out);
  static const std::regex re("ready: ([^\n]*)");
  return std::regex_search(text, m, re) ? m[1].str() : "";
}

}  // namespace kiln::cli::bench_serve
