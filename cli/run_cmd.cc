// `kiln run`: the elastic launcher (torchrun-compatible flags). One agent
// per node; see kiln/elastic/agent.h and docs/elastic.md.
//
//   kiln run -n 4 -- CMD ARGS...                      one node, embedded store
//   kiln run --standalone -n 4 -- CMD ARGS...         the same, with a fresh job id
//   kiln run --nnodes 1:2 --nproc-per-node 2 --rdzv-endpoint HOST:PORT --rdzv-id JOB -- CMD...
//
// With an endpoint, the agent that can bind HOST:PORT serves the store
// there (like torchrun's c10d backend); the others connect to it. A
// standalone `kiln store serve --port P` keeps the store alive whichever
// node fails.
#include <fmt/format.h>
#include <signal.h>
#include <unistd.h>

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cli/command.h"
#include "kiln/base/auth/job_token.h"
#include "kiln/base/backoff.h"
#include "kiln/base/logging.h"
#include "kiln/base/slurm.h"
#include "kiln/elastic/agent.h"
#include "kiln/elastic/etcd_change_feed.h"
#include "kiln/elastic/etcd_liveness.h"
#include "kiln/store/etcd/etcd_store.h"
#include "kiln/store/prefix_store.h"
#include "kiln/store/tcp/client.h"
#include "kiln/store/tcp/server.h"

namespace kiln::cli {
namespace {

struct RunArgs {
  bool standalone = false;
  std::string nnodes = "1:1";
  int nproc_per_node = 1;
  std::string rdzv_backend = "tcp";
  std::string rdzv_endpoint;
  std::string rdzv_id = "default";
  std::string node_id;
  std::string node_addr;
  int max_restarts = 3;
  double hang_timeout_s = 30;
  double startup_timeout_s = 300;
  double node_ttl_s = 10;
  double last_call_s = 2;
  double join_timeout_s = 600;
  double stop_grace_s = 30;
  double monitor_interval_s = 0.1;
  double backoff_base_s = 1;
  double backoff_cap_s = 30;
  int node_failure_limit = 3;
  std::string events;
  std::string token_file;
  std::string etcd_cacert;
  std::string etcd_cert;
  std::string etcd_key;
  std::vector<std::string> command;
};

Clock::duration secs(double s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

Status parse_nnodes(const std::string& text, int& min, int& max) {
  auto parse = [](std::string_view s, int& out) {
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    return ec == std::errc() && p == s.data() + s.size();
  };
  auto colon = text.find(':');
  bool ok = colon == std::string::npos ? parse(text, min) && parse(text, max)
                                       : parse(std::string_view(text).substr(0, colon), min) &&
                                             parse(std::string_view(text).substr(colon + 1), max);
  if (!ok || min < 1 || max < min) {
    return invalid_argument(
        fmt::format("kiln run: --nnodes {:?}: expected N or MIN:MAX with 1 <= MIN <= MAX", text));
  }
  return Status::ok();
}

Status parse_endpoint(const std::string& text, std::string& host, int& port) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return invalid_argument(
        fmt::format("kiln run: --rdzv-endpoint {:?}: expected HOST:PORT", text));
  }
  host = text.substr(0, colon);
  std::string_view p = std::string_view(text).substr(colon + 1);
  auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), port);
  if (ec != std::errc() || end != p.data() + p.size() || port <= 0 || port > 65535) {
    return invalid_argument(
        fmt::format("kiln run: --rdzv-endpoint {:?}: {:?} is not a port", text, p));
  }
  return Status::ok();
}

std::string hostname() {
  char buf[256] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "localhost";
  return buf;
}

elastic::Agent* g_agent = nullptr;

void on_stop_signal(int) {
  if (g_agent != nullptr) g_agent->request_stop();
}

// Connects to the rendezvous store, retrying while it is not up yet (the
// agents of a job start in any order).
Result<std::shared_ptr<store::Store>> connect_store(const std::string& host, int port,
                                                    const std::string& token,
                                                    Clock::duration op_timeout, Deadline deadline) {
  store::tcp::TcpStoreOptions options;
  options.token = token;
  options.connect_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(op_timeout);
  options.default_timeout = options.connect_timeout;
  Backoff backoff({.base = std::chrono::milliseconds(200), .cap = std::chrono::seconds(5)});
  while (true) {
    auto s = store::tcp::TcpStore::connect(host, static_cast<std::uint16_t>(port), options);
    if (s.is_ok()) return std::shared_ptr<store::Store>(std::move(*s));
    // A refused token or a server that is not ours will not change its mind.
    if (s.status().code() == Code::kFailedPrecondition) {
      return s.status().with_context(
          fmt::format("kiln run: reaching the rendezvous store at {}:{}", host, port));
    }
    if (!backoff.sleep_before_retry(deadline)) {
      return s.status().with_context(
          fmt::format("kiln run: reaching the rendezvous store at {}:{}", host, port));
    }
  }
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (true) {
    auto end = s.find(sep, start);
    out.push_back(s.substr(start, end - start));
    if (end == std::string::npos) return out;
    start = end + 1;
  }
}

// Where other nodes reach this one: --node-addr, else KILN_COMM_ADDR (the
// address Kiln's transports advertise), else the hostname.
std::string node_address(const std::string& flag) {
  if (!flag.empty()) return flag;
  const char* comm_addr = std::getenv("KILN_COMM_ADDR");
  if (comm_addr != nullptr && *comm_addr != '\0') return comm_addr;
  return hostname();
}

Status run_agent(std::shared_ptr<store::Store> job, const elastic::AgentOptions& o);

// A job id no other job on this host shares ("standalone-" and 16 hex digits).
std::string fresh_run_id() {
  std::random_device entropy;
  std::uint64_t id = (static_cast<std::uint64_t>(entropy()) << 32) ^ entropy();
  return fmt::format("standalone-{:016x}", id);
}

// torchrun's --standalone: a one-node job on an embedded store on a free
// loopback port, under a fresh job id; explicit rendezvous flags are
// ignored, and the log says so.
Status apply_standalone(RunArgs& a) {
  int min = 0, max = 0;
  KILN_RETURN_IF_ERROR(parse_nnodes(a.nnodes, min, max));
  if (max > 1) {
    return invalid_argument(fmt::format(
        "kiln run: --standalone runs one node, but --nnodes {:?} asks for up to {} (drop "
        "--standalone and give --rdzv-endpoint for a multi-node job)",
        a.nnodes, max));
  }
  if (!a.rdzv_endpoint.empty() || a.rdzv_backend != "tcp" || a.rdzv_id != "default") {
    log()->warn(
        "kiln run: --standalone ignores --rdzv-backend {:?}, --rdzv-endpoint {:?} and --rdzv-id "
        "{:?}",
        a.rdzv_backend, a.rdzv_endpoint, a.rdzv_id);
  }
  a.rdzv_backend = "tcp";
  a.rdzv_endpoint.clear();
  a.rdzv_id = fresh_run_id();
  log()->info("kiln run: standalone: --rdzv-backend tcp (embedded, loopback) --rdzv-id {}",
              a.rdzv_id);
  return Status::ok();
}

// Inside a Slurm step (`srun --ntasks-per-node=1 kiln run ...`) each task is
// one node's agent: what torchrun users pass by hand comes from the step
// (flags given explicitly win): --nnodes is the task count, the store is on
// the step's first node at a port derived from the job, --rdzv-id names the
// step, and node ids follow the task ranks.
Status apply_slurm_defaults(RunArgs& a) {
  KILN_ASSIGN_OR_RETURN(auto step, slurm_step_from_env());
  if (!step || !a.rdzv_endpoint.empty() || a.rdzv_backend == "etcd") return Status::ok();
  if (a.nnodes == "1:1") a.nnodes = std::to_string(step->ntasks);
  a.rdzv_endpoint = fmt::format("{}:{}", step->first_host, step->derived_port(1));
  if (a.rdzv_id == "default") a.rdzv_id = fmt::format("slurm-{}.{}", step->job_id, step->step_id);
  if (a.node_id.empty()) a.node_id = fmt::format("task{:05d}", step->procid);
  log()->info("kiln run: Slurm step {}.{}, task {}/{}: --nnodes {} --rdzv-endpoint {} --node-id {}",
              step->job_id, step->step_id, step->procid, step->ntasks, a.nnodes, a.rdzv_endpoint,
              a.node_id);
  return Status::ok();
}

Status run(RunArgs a) {
  // --standalone is one node on loopback, inside a Slurm step or not.
  if (a.standalone) {
    KILN_RETURN_IF_ERROR(apply_standalone(a));
  } else {
    KILN_RETURN_IF_ERROR(apply_slurm_defaults(a));
  }
  if (a.command.empty())
    return invalid_argument("kiln run: no command given (kiln run -n N -- CMD ARGS...)");
  if (a.rdzv_backend != "tcp" && a.rdzv_backend != "c10d" && a.rdzv_backend != "etcd") {
    return invalid_argument(
        fmt::format("kiln run: --rdzv-backend {:?}: expected tcp or etcd", a.rdzv_backend));
  }
  elastic::AgentOptions o;
  KILN_RETURN_IF_ERROR(parse_nnodes(a.nnodes, o.min_nodes, o.max_nodes));
  o.command = a.command;
  o.run_id = a.rdzv_id;
  o.nproc_per_node = a.nproc_per_node;
  o.self = {a.node_id.empty() ? hostname() : a.node_id, node_address(a.node_addr)};
  o.policy.max_restarts = a.max_restarts;
  o.policy.backoff_base = secs(a.backoff_base_s);
  o.policy.backoff_cap = secs(a.backoff_cap_s);
  o.policy.node_failure_limit = a.node_failure_limit;
  o.hang_timeout = secs(a.hang_timeout_s);
  o.startup_timeout = secs(a.startup_timeout_s);
  o.node_ttl = secs(a.node_ttl_s);
  o.last_call = secs(a.last_call_s);
  o.join_timeout = secs(a.join_timeout_s);
  o.stop_grace = secs(a.stop_grace_s);
  o.monitor_interval = secs(a.monitor_interval_s);
  o.events_path = a.events;

  // One node with an embedded store: every process is ours, a fresh token
  // does. Across nodes every agent must hold the same one.
  const bool one_node = o.max_nodes == 1 && a.rdzv_endpoint.empty();
  KILN_ASSIGN_OR_RETURN(o.job_token, auth::launcher_token(a.token_file, one_node, "kiln run"));
  // The workers (and their workers' store clients and transports) inherit it.
  setenv(auth::kJobTokenEnv, o.job_token.c_str(), 1);

  Clock::duration op_timeout = std::min(secs(5), o.node_ttl / 2);
  std::shared_ptr<store::Store> job;
  store::tcp::TcpStoreServer server({.token = o.job_token});
  if (a.rdzv_backend == "etcd") {
    if (a.rdzv_endpoint.empty()) {
      return invalid_argument(
          "kiln run: --rdzv-backend etcd needs --rdzv-endpoint HOST:PORT[,HOST:PORT...]");
    }
    store::etcd::EtcdStoreOptions eo;
    for (const auto& e : split(a.rdzv_endpoint, ',')) eo.endpoints.push_back(e);
    eo.prefix = "/kiln/rdzv/" + a.rdzv_id + "/";
    eo.tls = {a.etcd_cacert, a.etcd_cert, a.etcd_key};
    eo.default_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(op_timeout);
    KILN_ASSIGN_OR_RETURN(auto opened, store::etcd::EtcdStore::open(eo));
    std::shared_ptr<store::etcd::EtcdStore> etcd = std::move(opened);
    o.liveness = elastic::lease_liveness(etcd, o.node_ttl);
    o.changes = elastic::etcd_change_feed(etcd);
    job = etcd;
    o.serve_worker_store = true;
    return run_agent(job, o);
  }
  // The store: embedded on loopback, or served by whichever agent can bind
  // the endpoint, or someone else's.
  std::string host = "127.0.0.1";
  int port = 0;
  if (a.rdzv_endpoint.empty()) {
    if (o.max_nodes > 1) {
      return invalid_argument(
          "kiln run: --nnodes above 1 needs --rdzv-endpoint HOST:PORT that every node reaches");
    }
    KILN_RETURN_IF_ERROR(
        server.start(host, 0).with_context("kiln run: serving the embedded store"));
    port = server.port();
    o.hosts_store = true;
  } else {
    KILN_RETURN_IF_ERROR(parse_endpoint(a.rdzv_endpoint, host, port));
    o.hosts_store = server.start(host, static_cast<std::uint16_t>(port)).is_ok();
    if (o.hosts_store) log()->info("kiln run: serving the rendezvous store on {}:{}", host, port);
  }
  o.master_addr = host;
  o.master_port = port;
  KILN_ASSIGN_OR_RETURN(auto base,
                        connect_store(host, port, o.job_token, op_timeout,
                                      Deadline::after(o.join_timeout)));
  job = std::make_shared<store::PrefixStore>("rdzv/" + a.rdzv_id, base);
  return run_agent(job, o);
}

Status run_agent(std::shared_ptr<store::Store> job, const elastic::AgentOptions& o) {
  elastic::Agent agent(std::move(job), o);
  g_agent = &agent;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  Status s = agent.run();
  g_agent = nullptr;
  return s;
}

const CommandRegistration kRegister("", [](CLI::App& parent) {
  auto a = std::make_shared<RunArgs>();
  auto* cmd = parent.add_subcommand(
      "run",
      "Elastic launcher: run workers on this node, restart them on failure, re-form the job "
      "when nodes leave or join (torchrun-compatible flags; docs/elastic.md)");
  cmd->add_option("-n,--nproc-per-node,--nproc_per_node", a->nproc_per_node, "workers on this node")
      ->capture_default_str();
  cmd->add_flag("--standalone", a->standalone,
                "one node on an embedded loopback store under a fresh job id (torchrun's "
                "--standalone: the rendezvous flags are ignored)");
  cmd->add_option("--nnodes", a->nnodes, "nodes in the job: N or MIN:MAX")->capture_default_str();
  cmd->add_option("--rdzv-backend,--rdzv_backend", a->rdzv_backend, "tcp (kiln store) or etcd")
      ->capture_default_str();
  cmd->add_option("--rdzv-endpoint,--rdzv_endpoint", a->rdzv_endpoint,
                  "HOST:PORT of the rendezvous store (default: embedded, one node)");
  cmd->add_option("--rdzv-id,--rdzv_id", a->rdzv_id, "job id: agents with the same id form one job")
      ->capture_default_str();
  cmd->add_option("--node-id", a->node_id,
                  "this node's stable name (default: the hostname); ranks follow its sort order");
  cmd->add_option(
      "--node-addr", a->node_addr,
      "address other nodes reach this one at (default: KILN_COMM_ADDR, else the hostname)");
  cmd->add_option("--max-restarts,--max_restarts", a->max_restarts,
                  "restarts after failures before the job gives up (scale-ups, scale-downs and "
                  "preemptions do not count)")
      ->capture_default_str();
  cmd->add_option("--hang-timeout", a->hang_timeout_s,
                  "seconds without a worker heartbeat before it counts as hung (0: off)")
      ->capture_default_str();
  cmd->add_option("--startup-timeout", a->startup_timeout_s,
                  "seconds a worker may take to its first heartbeat (0: off)")
      ->capture_default_str();
  cmd->add_option("--node-ttl", a->node_ttl_s,
                  "seconds without a node heartbeat before the node counts as lost")
      ->capture_default_str();
  cmd->add_option("--last-call", a->last_call_s,
                  "seconds a round waits for more nodes once MIN joined")
      ->capture_default_str();
  cmd->add_option("--join-timeout", a->join_timeout_s, "seconds to wait for a round to form")
      ->capture_default_str();
  cmd->add_option("--stop-grace", a->stop_grace_s,
                  "seconds workers get to checkpoint and exit after SIGTERM")
      ->capture_default_str();
  cmd->add_option("--monitor-interval", a->monitor_interval_s, "seconds between health checks")
      ->capture_default_str();
  cmd->add_option("--backoff-base", a->backoff_base_s,
                  "first restart delay, seconds (doubles each time, jittered)")
      ->capture_default_str();
  cmd->add_option("--backoff-cap", a->backoff_cap_s, "largest restart delay, seconds")
      ->capture_default_str();
  cmd->add_option("--node-failure-limit", a->node_failure_limit,
                  "failures of one node within 10 minutes after which it leaves the job")
      ->capture_default_str();
  cmd->add_option("--events", a->events,
                  "append every decision as a JSON line (with wall-clock time) to FILE");
  cmd->add_option("--token-file", a->token_file,
                  "read the job token from FILE (mode 600; default: KILN_JOB_TOKEN, or a fresh "
                  "one for a one-node job); every node of a job needs the same");
  cmd->add_option("--etcd-cacert", a->etcd_cacert,
                  "etcd backend: CA bundle (PEM) that signed etcd's certificate (https:// endpoints)");
  cmd->add_option("--etcd-cert", a->etcd_cert,
                  "etcd backend: client certificate (PEM) for etcd's --client-cert-auth");
  cmd->add_option("--etcd-key", a->etcd_key, "etcd backend: the client certificate's key (PEM)");
  cmd->add_option("command", a->command, "the worker command and its arguments (after --)")
      ->required();
  cmd->callback(run_status([a] { return run(*a); }));
});

}  // namespace
}  // namespace kiln::cli
