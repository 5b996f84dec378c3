#include "cli/torch/bench_serve_where.h"

#include <dirent.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "kiln/base/socket.h"
#include "kiln/serve/response_reader.h"

namespace kiln::cli {
namespace {

using nlohmann::json;

// Note [Where a request's time goes]: at the rate where p99 still meets the
// SLO, a request costs the batched replica's host more than the forward
// pass's share of a batch (session 13: 259 µs per request at 3,860 req/s vs
// ~155 µs of forward per image at batch 20). The candidates share two
// cores: the replica's front thread (HTTP, the body's 784 numbers, the
// answer), its batch worker (forward pass and the batch's input), the load
// generator's thread, and batches smaller than max_batch. Each is read from
// the kernel's own accounting (/proc/PID/task/TID/schedstat: ns on a CPU
// and ns runnable while another thread held it) and the replica's
// /metrics, before and after each ladder step, and divided by the step's
// answered requests. Session 14's answer (docs/perf.md): none of those. At
// the highest rate within the SLO the batch worker is busy 96-99% of the
// time and never waits for a core; it runs the batch (input + forward) for
// 203-257 µs per request at a mean batch of 16-20, what the service line
// measures for batch 20 in the same process (not the ~155 µs of the forward
// part's best minute); the front (33-42 µs) and the load generator (32-38
// µs) run on the other core, which stays 60% idle.

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

// One thread's accounting from /proc/PID/task/TID; threads 0 if it is gone.
ThreadTimes thread_times(const std::string& task_dir) {
  ThreadTimes t;
  std::istringstream sched(slurp(task_dir + "/schedstat"));
  double run_ns = 0, wait_ns = 0;
  if (!(sched >> run_ns >> wait_ns)) return t;
  t.run_s = run_ns / 1e9;
  t.wait_s = wait_ns / 1e9;
  std::istringstream status(slurp(task_dir + "/status"));
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("voluntary_ctxt_switches:", 0) == 0) t.voluntary = std::stol(line.substr(24));
    if (line.rfind("nonvoluntary_ctxt_switches:", 0) == 0) {
      t.involuntary = std::stol(line.substr(27));
    }
  }
  // /proc/PID/task/TID/stat: minflt is the 10th field, the 8th after the
  // command's closing parenthesis.
  const std::string stat = slurp(task_dir + "/stat");
  if (const auto close = stat.rfind(')'); close != std::string::npos) {
    std::istringstream fields(stat.substr(close + 2));
    std::string field;
    for (int i = 3; i <= 10 && fields >> field; ++i) {
      if (i == 10) t.minor_faults = std::stol(field);
    }
  }
  std::istringstream sched_debug(slurp(task_dir + "/sched"));
  for (std::string line; std::getline(sched_debug, line);) {
    if (line.rfind("se.nr_migrations", 0) == 0) {
      t.migrations = std::stol(line.substr(line.find(':') + 1));
    }
  }
  t.threads = 1;
  return t;
}

void add(ThreadTimes& sum, const ThreadTimes& t) {
  sum.run_s += t.run_s;
  sum.wait_s += t.wait_s;
  sum.voluntary += t.voluntary;
  sum.involuntary += t.involuntary;
  sum.minor_faults += t.minor_faults;
  sum.migrations += t.migrations;
  sum.threads += t.threads;
}

// Every thread of `pid`, summed per thread name.
std::map<std::string, ThreadTimes> threads_by_name(const std::string& proc_dir) {
  std::map<std::string, ThreadTimes> out;
  DIR* d = ::opendir((proc_dir + "/task").c_str());
  if (d == nullptr) return out;
  while (const dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    const std::string task = proc_dir + "/task/" + e->d_name;
    std::string name = slurp(task + "/comm");
    while (!name.empty() && name.back() == '\n') name.pop_back();
    const ThreadTimes t = thread_times(task);
    if (t.threads > 0) add(out[name], t);
  }
  ::closedir(d);
  return out;
}

// Busy and total CPU seconds of the host (the first line of /proc/stat).
void host_cpu(double* busy_s, double* total_s) {
  std::istringstream stat(slurp("/proc/stat"));
  std::string cpu;
  stat >> cpu;
  const double tick = static_cast<double>(::sysconf(_SC_CLK_TCK));
  double v[10] = {};
  for (double& x : v) stat >> x;
  double total = 0;
  for (int i = 0; i < 8; ++i) total += v[i];  // guest time is already in user
  *total_s = total / tick;
  *busy_s = (total - v[3] - v[4]) / tick;  // less idle and iowait
}

// GET `path` from 127.0.0.1:port; "" if it cannot be read in 5 s (the
// breakdown then goes without the replica's series).
std::string http_get(int port, const std::string& path) {
  const Deadline deadline = Deadline::after_seconds(5);
  auto fd = net::connect_tcp("127.0.0.1", static_cast<std::uint16_t>(port), deadline);
  if (!fd.is_ok()) return "";
  const std::string request =
      fmt::format("GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", path);
  if (!net::send_all(fd->get(), request, deadline).is_ok()) return "";
  serve::ResponseReader reader;
  char buf[16384];
  while (!deadline.expired()) {
    pollfd p{.fd = fd->get(), .events = POLLIN, .revents = 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    const ssize_t n = ::recv(fd->get(), buf, sizeof buf, MSG_DONTWAIT);
    if (n <= 0) return "";
    reader.feed(std::string_view(buf, static_cast<std::size_t>(n)));
    auto r = reader.next();
    if (!r.is_ok()) return "";
    if (r->has_value()) return (*r)->status == 200 ? (*r)->body : "";
  }
  return "";
}

// Prometheus text: series (name with its labels) -> value.
std::map<std::string, double> parse_metrics(const std::string& text) {
  std::map<std::string, double> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    const auto space = line.rfind(' ');
    if (space == std::string::npos) continue;
    try {
      out[line.substr(0, space)] = std::stod(line.substr(space + 1));
    } catch (const std::exception&) {
      // not a number (NaN spelled otherwise): not a series this reads
    }
  }
  return out;
}

json per_request(const ThreadTimes& d, double wall_s, double n) {
  return {{"threads", d.threads},
          {"cpu_us_per_request", d.run_s * 1e6 / n},
          {"runqueue_wait_us_per_request", d.wait_s * 1e6 / n},
          {"cores", d.run_s / wall_s},
          {"switches_per_request", static_cast<double>(d.voluntary + d.involuntary) / n},
          {"involuntary_switches_per_request", static_cast<double>(d.involuntary) / n},
          {"minor_faults_per_request", static_cast<double>(d.minor_faults) / n},
          {"migrations_per_request", static_cast<double>(d.migrations) / n}};
}

ThreadTimes minus(const ThreadTimes& a, const ThreadTimes& b) {
  return {a.run_s - b.run_s,
          a.wait_s - b.wait_s,
          a.voluntary - b.voluntary,
          a.involuntary - b.involuntary,
          a.minor_faults - b.minor_faults,
          a.migrations - b.migrations,
          a.threads};
}

}  // namespace

WhereSnapshot where_snapshot(pid_t replica_pid, int port) {
  WhereSnapshot s;
  s.metrics = parse_metrics(http_get(port, "/metrics"));
  s.replica = threads_by_name(fmt::format("/proc/{}", replica_pid));
  s.load_gen = thread_times(fmt::format("/proc/self/task/{}", ::gettid()));
  for (const auto& [name, t] : threads_by_name("/proc/self")) add(s.bench, t);
  host_cpu(&s.host_busy_s, &s.host_total_s);
  s.at = Clock::now();
  return s;
}

json where_between(const WhereSnapshot& before, const WhereSnapshot& after,
                   std::uint64_t answered) {
  const double wall_s = std::chrono::duration<double>(after.at - before.at).count();
  const double n = std::max<double>(1, static_cast<double>(answered));
  json out;
  out["wall_s"] = wall_s;
  out["answered"] = answered;
  const double host_total = after.host_total_s - before.host_total_s;
  const double cpus = static_cast<double>(::sysconf(_SC_NPROCESSORS_ONLN));
  out["host_busy_cores"] =
      host_total > 0 ? (after.host_busy_s - before.host_busy_s) / host_total * cpus : 0;
  json threads = json::object();
  double replica_cpu = 0;
  for (const auto& [name, a] : after.replica) {
    const auto b = before.replica.find(name);
    const ThreadTimes d = b == before.replica.end() ? a : minus(a, b->second);
    replica_cpu += d.run_s;
    threads[name] = per_request(d, wall_s, n);
  }
  out["replica_threads"] = threads;
  out["replica_cpu_us_per_request"] = replica_cpu * 1e6 / n;
  const ThreadTimes load = minus(after.load_gen, before.load_gen);
  out["load_gen"] = per_request(load, wall_s, n);
  const ThreadTimes bench = minus(after.bench, before.bench);
  out["bench_other_threads_cpu_us_per_request"] = (bench.run_s - load.run_s) * 1e6 / n;
  if (before.metrics.empty() || after.metrics.empty()) return out;
  auto delta = [&](const std::string& series) {
    const auto a = after.metrics.find(series), b = before.metrics.find(series);
    return a == after.metrics.end() ? 0.0 : a->second - (b == before.metrics.end() ? 0 : b->second);
  };
  const double batches = delta("kiln_serve_batch_size_count");
  const double in_batches = delta("kiln_serve_batch_size_sum");
  if (batches <= 0) return out;
  json sizes = json::object();  // batches per size bucket, not cumulative
  double below = 0;
  for (const char* le : {"1", "2", "4", "8", "16", "32", "64", "128", "256", "+Inf"}) {
    const double cumulative = delta(fmt::format("kiln_serve_batch_size_bucket{{le=\"{}\"}}", le));
    if (cumulative - below > 0) sizes[fmt::format("le_{}", le)] = cumulative - below;
    below = cumulative;
  }
  const double queued = delta("kiln_serve_queue_seconds_count");
  const double served = delta("kiln_serve_request_seconds_count");
  out["batches"] = {
      {"count", batches},
      {"mean_size", in_batches / batches},
      {"full_fraction", delta("kiln_serve_batches_full_total") / batches},
      {"sizes", sizes},
      {"mean_queue_wait_ms", queued > 0 ? delta("kiln_serve_queue_seconds_sum") / queued * 1e3 : 0},
      {"mean_batch_ms", delta("kiln_serve_batch_seconds_sum") / batches * 1e3},
      {"batch_us_per_request", delta("kiln_serve_batch_seconds_sum") / in_batches * 1e6},
      {"batch_worker_busy", delta("kiln_serve_batch_seconds_sum") / wall_s},
      {"server_latency_mean_ms",
       served > 0 ? delta("kiln_serve_request_seconds_sum") / served * 1e3 : 0}};
  return out;
}

}  // namespace kiln::cli
