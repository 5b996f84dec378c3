// `kiln launch -n N -- CMD ARGS...`: runs N local ranks of CMD with the
// torchrun environment set (kiln/elastic/worker_env.h), prefixes their output with the rank, and exits
// non-zero if any rank fails. The launcher serves the rendezvous store.
// (A simple spawner; the elastic launcher is `kiln run`.)
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "cli/command.h"
#include "kiln/base/line_forwarder.h"
#include "kiln/base/logging.h"
#include "kiln/base/slurm.h"
#include "kiln/elastic/script_master.h"
#include "kiln/elastic/worker_env.h"
#include "kiln/store/tcp/server.h"

namespace kiln::cli {
namespace {

struct Child {
  int rank;
  pid_t pid;
  int out_fd;  // stdout and stderr, merged
  std::unique_ptr<LineForwarder> output;
  bool exited = false;
  int status = 0;
};


// Note [Binding ranks to cores]: like Open MPI's default for small jobs, a
// rank that has a core to itself is bound to it, so the scheduler never
// stacks two spinning ranks on one core (which costs tens of µs per hand-off).
bool should_bind(const std::string& bind, int n) {
  if (bind == "core") return true;
  if (bind == "none") return false;
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  return n <= cpus;
}

void bind_to_core(int rank) {
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return;
  int count = CPU_COUNT(&allowed);
  if (count == 0) return;
  int target = rank % count, seen = 0;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &allowed)) continue;
    if (seen++ == target) {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(cpu, &one);
      sched_setaffinity(0, sizeof(one), &one);
      return;
    }
  }
}

Status launch(int n, const std::vector<std::string>& cmd, double grace_s, const std::string& bind) {
  if (bind != "auto" && bind != "core" && bind != "none") {
    return invalid_argument(fmt::format("kiln launch: --bind {:?}: expected auto, core or none", bind));
  }
  const bool bind_cores = should_bind(bind, n);
  // One kiln launch spans one node: several tasks of a Slurm step would each
  // start a world of their own.
  KILN_ASSIGN_OR_RETURN(auto step, slurm_step_from_env());
  if (step && step->ntasks > 1) {
    return invalid_argument(fmt::format(
        "kiln launch: this is task {} of a {}-task Slurm step, and kiln launch runs one node: "
        "use `srun -n N CMD` (Kiln's workers take their rank from the step) or "
        "`srun --ntasks-per-node=1 kiln run --nproc-per-node N -- CMD`",
        step->procid, step->ntasks));
  }
  if (n < 1) return invalid_argument("kiln launch: -n must be at least 1");
  if (cmd.empty()) return invalid_argument("kiln launch: no command given (kiln launch -n N -- CMD ARGS...)");
  store::tcp::TcpStoreServer server;
  KILN_RETURN_IF_ERROR(server.start("127.0.0.1", 0).with_context("kiln launch: serving the store"));
  // Every torchrun variable, as `kiln run` sets them for one node; MASTER_PORT
  // is left free for the script's own store (Note [The script's MASTER_PORT]).
  KILN_ASSIGN_OR_RETURN(int master_port, elastic::free_tcp_port());
  elastic::WorkerGroupSpec spec{.command = cmd,
                                .nproc_per_node = n,
                                .store_addr = "127.0.0.1",
                                .store_port = server.port(),
                                .master_addr = "127.0.0.1",
                                .master_port = master_port,
                                .run_id = fmt::format("launch-{}", getpid())};

  std::vector<Child> children;
  for (int rank = 0; rank < n; ++rank) {
    // Built before fork: the store server's threads may hold malloc's lock.
    std::vector<std::string> env = elastic::worker_environment(spec, rank, -1);
    std::vector<char*> envp;
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    std::vector<char*> argv;
    for (const auto& a : cmd) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return errno_status("pipe", errno);
    pid_t pid = fork();
    if (pid < 0) return errno_status("fork", errno);
    if (pid == 0) {
      dup2(fds[1], STDOUT_FILENO);
      dup2(fds[1], STDERR_FILENO);
      if (bind_cores) bind_to_core(rank);
      execvpe(argv[0], argv.data(), envp.data());
      std::fprintf(stderr, "kiln launch: cannot run %s: %s\n", argv[0], std::strerror(errno));
      _exit(127);
    }
    close(fds[1]);
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    children.push_back({rank, pid, fds[0], std::make_unique<LineForwarder>(fmt::format("[rank {}] ", rank))});
  }

  // Forward output until every pipe closes; reap children as they exit. After
  // the first failure the others get `grace_s` to fail or finish on their own
  // (Kiln's collectives notice a dead peer), then are killed.
  int open_pipes = n;
  auto kill_at = std::chrono::steady_clock::time_point::max();  // none yet
  int first_failed = -1;
  while (open_pipes > 0) {
    std::vector<pollfd> pfds;
    for (auto& c : children) {
      if (c.out_fd >= 0) pfds.push_back({c.out_fd, POLLIN, 0});
    }
    poll(pfds.data(), pfds.size(), 100);
    for (auto& c : children) {
      if (c.out_fd < 0) continue;
      char buf[65536];
      ssize_t r;
      while ((r = read(c.out_fd, buf, sizeof(buf))) > 0) c.output->append(buf, static_cast<size_t>(r));
      if (r == 0) {
        c.output->flush();
        close(c.out_fd);
        c.out_fd = -1;
        --open_pipes;
      }
    }
    for (auto& c : children) {
      if (c.exited) continue;
      if (waitpid(c.pid, &c.status, WNOHANG) == c.pid) {
        c.exited = true;
        bool ok = WIFEXITED(c.status) && WEXITSTATUS(c.status) == 0;
        if (!ok && first_failed < 0) {
          first_failed = c.rank;
          kill_at = std::chrono::steady_clock::now() +
                    std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                        std::chrono::duration<double>(grace_s));
        }
      }
    }
    if (std::chrono::steady_clock::now() > kill_at) {
      for (auto& c : children) {
        if (!c.exited) kill(c.pid, SIGKILL);
      }
      kill_at = std::chrono::steady_clock::time_point::max();
    }
  }
  std::vector<std::string> failures;
  for (auto& c : children) {
    if (!c.exited) waitpid(c.pid, &c.status, 0);
    if (WIFEXITED(c.status) && WEXITSTATUS(c.status) == 0) continue;
    failures.push_back(WIFSIGNALED(c.status)
                           ? fmt::format("rank {} killed by signal {} ({})", c.rank, WTERMSIG(c.status), strsignal(WTERMSIG(c.status)))
                           : fmt::format("rank {} exited with code {}", c.rank, WEXITSTATUS(c.status)));
  }
  if (!failures.empty()) {
    std::string msg = fmt::format("kiln launch: {} of {} ranks failed (first: rank {}): ", failures.size(), n, first_failed);
    for (size_t i = 0; i < failures.size(); ++i) msg += (i ? "; " : "") + failures[i];
    return aborted(msg);
  }
  return Status::ok();
}

struct LaunchArgs {
  int n = 1;
  double grace_s = 10;
  std::string bind = "auto";
  std::vector<std::string> cmd;
};

const CommandRegistration kRegister("", [](CLI::App& parent) {
  auto args = std::make_shared<LaunchArgs>();
  auto* cmd = parent.add_subcommand("launch", "Run N local ranks of a command with RANK/WORLD_SIZE/MASTER_* set");
  cmd->add_option("-n,--nproc", args->n, "number of ranks")->required();
  cmd->add_option("--grace", args->grace_s, "seconds the other ranks get after one fails, before they are killed");
  cmd->add_option("--bind", args->bind, "bind each rank to a core: auto (when there are enough cores), core, none");
  cmd->add_option("command", args->cmd, "the command and its arguments (after --)")->required();
  cmd->callback(run_status([args] { return launch(args->n, args->cmd, args->grace_s, args->bind); }));
});

}  // namespace
}  // namespace kiln::cli
