// `kiln launch -n N -- CMD ARGS...`: runs N local ranks of CMD with the
// torchrun environment set, prefixes their output with the rank, and exits
// non-zero if any rank fails. The launcher serves the rendezvous store.
// (A simple spawner; the elastic launcher is `kiln run`.) The job gets a
// fresh token (or KILN_JOB_TOKEN / --token-file) that the store and the
// ranks' connections require; the ranks find it in KILN_JOB_TOKEN.
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
#include "kiln/base/auth/job_token.h"
#include "kiln/base/line_forwarder.h"
#include "kiln/base/logging.h"
#include "kiln/store/tcp/server.h"

extern char** environ;

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

Status launch(int n, const std::vector<std::string>& cmd, double grace_s, const std::string& bind,
              const std::string& token_file) {
  if (bind != "auto" && bind != "core" && bind != "none") {
    return invalid_argument(fmt::format("kiln launch: --bind {:?}: expected auto, core or none", bind));
  }
  const bool bind_cores = should_bind(bind, n);
  if (n < 1) return invalid_argument("kiln launch: -n must be at least 1");
  if (cmd.empty()) return invalid_argument("kiln launch: no command given (kiln launch -n N -- CMD ARGS...)");
  // Every rank runs here, so a fresh token is always possible.
  KILN_ASSIGN_OR_RETURN(std::string token,
                        auth::launcher_token(token_file, /*may_generate=*/true, "kiln launch"));
  store::tcp::TcpStoreServer server({.token = token});
  KILN_RETURN_IF_ERROR(server.start("127.0.0.1", 0).with_context("kiln launch: serving the store"));
  std::string tag = fmt::format("launch-{}", getpid());

  std::vector<Child> children;
  for (int rank = 0; rank < n; ++rank) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return errno_status("pipe", errno);
    pid_t pid = fork();
    if (pid < 0) return errno_status("fork", errno);
    if (pid == 0) {
      dup2(fds[1], STDOUT_FILENO);
      dup2(fds[1], STDERR_FILENO);
      setenv("RANK", std::to_string(rank).c_str(), 1);
      setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
      setenv("WORLD_SIZE", std::to_string(n).c_str(), 1);
      setenv("LOCAL_WORLD_SIZE", std::to_string(n).c_str(), 1);
      setenv("GROUP_RANK", "0", 1);
      setenv("MASTER_ADDR", "127.0.0.1", 1);
      setenv("MASTER_PORT", std::to_string(server.port()).c_str(), 1);
      setenv("KILN_AGENT_STORE", "1", 1);
      setenv("KILN_GROUP_TAG", tag.c_str(), 1);
      setenv(auth::kJobTokenEnv, token.c_str(), 1);
      if (bind_cores) bind_to_core(rank);
      std::vector<char*> argv;
      for (const auto& a : cmd) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execvp(argv[0], argv.data());
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
  std::string token_file;
  std::vector<std::string> cmd;
};

const CommandRegistration kRegister("", [](CLI::App& parent) {
  auto args = std::make_shared<LaunchArgs>();
  auto* cmd = parent.add_subcommand("launch", "Run N local ranks of a command with RANK/WORLD_SIZE/MASTER_* set");
  cmd->add_option("-n,--nproc", args->n, "number of ranks")->required();
  cmd->add_option("--grace", args->grace_s, "seconds the other ranks get after one fails, before they are killed");
  cmd->add_option("--bind", args->bind, "bind each rank to a core: auto (when there are enough cores), core, none");
  cmd->add_option("--token-file", args->token_file,
                  "read the job token from FILE (mode 600) instead of KILN_JOB_TOKEN or a fresh one");
  cmd->add_option("command", args->cmd, "the command and its arguments (after --)")->required();
  cmd->callback(run_status([args] { return launch(args->n, args->cmd, args->grace_s, args->bind, args->token_file);
  }));
});

}  // namespace
}  // namespace kiln::cli
