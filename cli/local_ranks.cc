#include "cli/local_ranks.h"

#include "kiln/base/auth/job_token.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>

#include "kiln/base/fd.h"
#include "kiln/base/line_forwarder.h"
#include "kiln/base/rank_cores.h"
#include "kiln/elastic/script_master.h"
#include "kiln/elastic/worker_env.h"
#include "kiln/store/tcp/server.h"

namespace kiln::cli {
namespace {

struct Child {
  int rank;
  pid_t pid;
  Fd out_fd;  // stdout and stderr merged; invalid when closed or not captured
  std::unique_ptr<LineForwarder> output;
  bool exited = false;
  int status = 0;
};

// Note [Binding ranks to cores]: like Open MPI's default for small jobs, a
// rank that has a core to itself is bound, so the scheduler never stacks two
// spinning ranks on one core (which costs tens of µs per hand-off); with
// fewer ranks than cores each gets a block of them, a lone rank all of them,
// and runs a thread on each (Note [A rank's share of the cores] in
// kiln/base/rank_cores.h: bound to one core of two, a lone rank ran two
// threads on it, 3-10x slow at random).
bool should_bind(const std::string& bind, int n) {
  if (bind == "core") return true;
  if (bind == "none") return false;
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  return n <= cpus;
}

// The affinity mask of each of `ranks` ranks, from the launcher's own
// (cores_of_rank); built before fork, since the child may not allocate.
std::vector<cpu_set_t> rank_masks(int ranks) {
  const std::vector<int> allowed = allowed_cpus();
  if (allowed.empty()) return {};
  std::vector<cpu_set_t> masks(static_cast<std::size_t>(ranks));
  for (int rank = 0; rank < ranks; ++rank) {
    cpu_set_t& m = masks[static_cast<std::size_t>(rank)];
    CPU_ZERO(&m);
    for (const int cpu : cores_of_rank(allowed, rank, ranks)) CPU_SET(cpu, &m);
  }
  return masks;
}

std::string describe_exit(const Child& c) {
  if (WIFSIGNALED(c.status)) {
    return fmt::format("rank {} killed by signal {} ({})", c.rank, WTERMSIG(c.status),
                       strsignal(WTERMSIG(c.status)));
  }
  return fmt::format("rank {} exited with code {}", c.rank, WEXITSTATUS(c.status));
}

// Forwards output until every captured pipe closes and every child has
// exited. After the first failure the others get `grace_s`, then SIGKILL.
int supervise(std::vector<Child>& children, double grace_s) {
  auto kill_at = std::chrono::steady_clock::time_point::max();  // none yet
  int first_failed = -1;
  for (;;) {
    std::vector<pollfd> pfds;
    bool running = false;
    for (auto& c : children) {
      if (c.out_fd.valid()) pfds.push_back({c.out_fd.get(), POLLIN, 0});
      running = running || !c.exited;
    }
    if (pfds.empty() && !running) break;
    // Also the reaping tick: a child that captures nothing has no pipe to wake us.
    poll(pfds.data(), pfds.size(), 100);
    for (auto& c : children) {
      if (!c.out_fd.valid()) continue;
      char buf[65536];
      ssize_t r;
      while ((r = read(c.out_fd.get(), buf, sizeof(buf))) > 0) {
        c.output->append(buf, static_cast<size_t>(r));
      }
      if (r == 0) {
        c.output->flush();
        c.out_fd.reset();
      }
    }
    for (auto& c : children) {
      if (c.exited || waitpid(c.pid, &c.status, WNOHANG) != c.pid) continue;
      c.exited = true;
      bool ok = WIFEXITED(c.status) && WEXITSTATUS(c.status) == 0;
      if (!ok && first_failed < 0) {
        first_failed = c.rank;
        kill_at = std::chrono::steady_clock::now() +
                  std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                      std::chrono::duration<double>(grace_s));
      }
    }
    if (std::chrono::steady_clock::now() > kill_at) {
      for (auto& c : children) {
        if (!c.exited) kill(c.pid, SIGKILL);
      }
      kill_at = std::chrono::steady_clock::time_point::max();
    }
  }
  return first_failed;
}

// The inverse of exit_code_for (cli/command.h) for a rank's exit code.
Status status_for_exit_code(int code, std::string msg) {
  switch (code) {
    case 2:
      return invalid_argument(std::move(msg));
    case 3:
      return data_loss(std::move(msg));
    case 4:
      return aborted(std::move(msg));
    default:
      return internal_error(std::move(msg));
  }
}

}  // namespace

Status run_local_ranks(const LocalRanksOptions& o) {
  if (o.bind != "auto" && o.bind != "core" && o.bind != "none") {
    return invalid_argument(
        fmt::format("{}: --bind {:?}: expected auto, core or none", o.who, o.bind));
  }
  if (o.ranks < 1) return invalid_argument(fmt::format("{}: need at least 1 rank", o.who));
  if (o.command.empty())
    return invalid_argument(fmt::format("{}: no command given (CMD ARGS... after --)", o.who));
  const std::vector<cpu_set_t> masks =
      should_bind(o.bind, o.ranks) ? rank_masks(o.ranks) : std::vector<cpu_set_t>{};
  // Every rank runs here, so a fresh token is always possible.
  KILN_ASSIGN_OR_RETURN(std::string token, auth::launcher_token(o.token_file, /*may_generate=*/true, o.who));
  store::tcp::TcpStoreServer server({.token = token});
  KILN_RETURN_IF_ERROR(
      server.start("127.0.0.1", 0).with_context(o.who + ": serving the rendezvous store"));
  // Every torchrun variable, as `kiln run` sets them for one node; MASTER_PORT
  // is left free for the script's own store (Note [The script's MASTER_PORT]).
  KILN_ASSIGN_OR_RETURN(int master_port, elastic::free_tcp_port());
  elastic::WorkerGroupSpec spec{.command = o.command,
                                .nproc_per_node = o.ranks,
                                .store_addr = "127.0.0.1",
                                .store_port = server.port(),
                                .master_addr = "127.0.0.1",
                                .master_port = master_port,
                                .run_id = fmt::format("launch-{}", getpid()),
                                .extra_env = {{auth::kJobTokenEnv, token}}};
  std::vector<char*> argv;
  for (const auto& a : o.command) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::fflush(nullptr);  // nothing buffered here is written twice by a child

  std::vector<Child> children;
  for (int rank = 0; rank < o.ranks; ++rank) {
    // Built before fork: the store server's threads may hold malloc's lock,
    // so the child allocates nothing between fork and exec.
    std::vector<std::string> env = elastic::worker_environment(spec, rank, -1);
    std::vector<char*> envp;
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    int fds[2] = {-1, -1};
    if (o.prefix_output && pipe2(fds, O_CLOEXEC) != 0) return errno_status("pipe", errno);
    Fd out_read(fds[0]), out_write(fds[1]);
    pid_t pid = fork();
    if (pid < 0) return errno_status("fork", errno);
    if (pid == 0) {
      if (o.prefix_output) {
        dup2(out_write.get(), STDOUT_FILENO);
        dup2(out_write.get(), STDERR_FILENO);
      }
      if (!masks.empty() && CPU_COUNT(&masks[static_cast<std::size_t>(rank)]) > 0) {
        sched_setaffinity(0, sizeof(cpu_set_t), &masks[static_cast<std::size_t>(rank)]);
      }
      execvpe(argv[0], argv.data(), envp.data());
      std::fprintf(stderr, "%s: cannot run %s: %s\n", o.who.c_str(), argv[0], std::strerror(errno));
      _exit(127);
    }
    std::unique_ptr<LineForwarder> forwarder;
    if (o.prefix_output) {
      out_write.reset();
      fcntl(out_read.get(), F_SETFL, O_NONBLOCK);
      forwarder = std::make_unique<LineForwarder>(fmt::format("[rank {}] ", rank));
    }
    children.push_back({rank, pid, std::move(out_read), std::move(forwarder)});
  }

  int first_failed = supervise(children, o.grace_s);
  std::vector<std::string> failures;
  for (auto& c : children) {
    if (!(WIFEXITED(c.status) && WEXITSTATUS(c.status) == 0)) failures.push_back(describe_exit(c));
  }
  if (failures.empty()) return Status::ok();
  std::string msg = fmt::format("{}: {} of {} ranks failed (first: rank {}): ", o.who,
                                failures.size(), o.ranks, first_failed);
  for (size_t i = 0; i < failures.size(); ++i) msg += (i ? "; " : "") + failures[i];
  if (o.keep_exit_code) {
    for (const auto& c : children) {
      if (c.rank == first_failed && WIFEXITED(c.status)) {
        return status_for_exit_code(WEXITSTATUS(c.status), msg);
      }
    }
  }
  return aborted(msg);
}

std::optional<Status> run_as_local_ranks_unless_launched(int ranks, const std::string& who) {
  const char* rank = std::getenv("RANK");
  if (rank != nullptr && *rank != '\0') return std::nullopt;
  // This process's own arguments, NUL-separated; argv[0] becomes the
  // executable itself, so neither PATH nor the working directory matter.
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  std::string raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::string> argv;
  for (std::size_t start = 0; start < raw.size();) {
    std::size_t end = raw.find('\0', start);
    if (end == std::string::npos) end = raw.size();
    argv.push_back(raw.substr(start, end - start));
    start = end + 1;
  }
  char exe[4096];
  ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (argv.empty() || len <= 0) {
    return failed_precondition(
        fmt::format("{}: cannot read this process's command line from /proc/self; run it under "
                    "kiln launch -n N",
                    who));
  }
  argv[0].assign(exe, static_cast<std::size_t>(len));
  return run_local_ranks({.ranks = ranks,
                          .command = std::move(argv),
                          .prefix_output = false,
                          .keep_exit_code = true,
                          .who = who});
}

}  // namespace kiln::cli
