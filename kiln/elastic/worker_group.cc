#include "kiln/elastic/worker_group.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "kiln/base/fd.h"
#include "kiln/base/line_forwarder.h"
#include "kiln/elastic/worker_env.h"

namespace kiln::elastic {

struct WorkerGroup::Worker {
  int local_rank = 0;
  int rank = 0;
  pid_t pid = -1;
  Fd out_fd;  // stdout and stderr, merged
  Fd heartbeat_fd;
  std::unique_ptr<LineForwarder> output;
  bool exited = false;
  int status = 0;
  std::int64_t beats = 0;  // steps (Note [What a heartbeat byte means])
  bool beat_seen = false;  // any heartbeat, busy beats included
  Clock::time_point last_beat{};
};

namespace {

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

std::string describe_exit(int status) {
  if (WIFSIGNALED(status)) {
    return fmt::format("killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  }
  return fmt::format("exited with code {}", WEXITSTATUS(status));
}

bool succeeded(int status) { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }

}  // namespace

WorkerGroup::WorkerGroup(WorkerGroupSpec spec) : spec_(std::move(spec)) {}

Result<std::unique_ptr<WorkerGroup>> WorkerGroup::start(const WorkerGroupSpec& spec) {
  if (spec.command.empty()) return invalid_argument("kiln run: no worker command given");
  if (spec.nproc_per_node < 1)
    return invalid_argument("kiln run: --nproc-per-node must be at least 1");
  std::unique_ptr<WorkerGroup> group(new WorkerGroup(spec));
  group->started_at_ = Clock::now();
  for (int i = 0; i < spec.nproc_per_node; ++i) {
    Status s = group->spawn(i);
    if (!s.is_ok()) return s.with_context(fmt::format("starting local worker {}", i));
  }
  return group;
}

Status WorkerGroup::spawn(int local_rank) {
  auto w = std::make_unique<Worker>();
  w->local_rank = local_rank;
  w->rank = spec_.group_rank * spec_.nproc_per_node + local_rank;
  w->output = std::make_unique<LineForwarder>(fmt::format("[rank {}] ", w->rank));
  int out_fds[2], beat_fds[2];
  if (pipe2(out_fds, O_CLOEXEC) != 0) return errno_status("pipe", errno);
  Fd out[2] = {Fd(out_fds[0]), Fd(out_fds[1])};
  if (pipe2(beat_fds, O_CLOEXEC | O_NONBLOCK) != 0) return errno_status("pipe", errno);
  Fd beat[2] = {Fd(beat_fds[0]), Fd(beat_fds[1])};
  // Built before fork: the child only calls async-signal-safe functions.
  auto env = worker_environment(spec_, local_rank, kWorkerHeartbeatFd);
  std::vector<char*> envp;
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<char*> argv;
  for (const auto& a : spec_.command) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t parent = getpid();

  pid_t pid = fork();
  if (pid < 0) return errno_status("fork", errno);
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the agent died before prctl
    setpgid(0, 0);
    dup2(out[1].get(), STDOUT_FILENO);
    dup2(out[1].get(), STDERR_FILENO);
    // Note [The heartbeat is descriptor 3]: the pipe's write end, wherever
    // the agent's descriptor table put it, becomes descriptor 3 in the
    // worker, open across exec (dup2 clears close-on-exec on the copy; the
    // original closes at exec). A fixed one-digit number, because POSIX sh
    // (dash) cannot redirect to descriptors above 9: `printf x >&12` is a
    // syntax error, and an agent started with a few extra descriptors open
    // silently left its shell workers without heartbeats. It is
    // non-blocking, so a write never stalls the worker.
    if (beat[1].get() == kWorkerHeartbeatFd) {
      fcntl(beat[1].get(), F_SETFD, 0);
    } else {
      dup2(beat[1].get(), kWorkerHeartbeatFd);
    }
    execvpe(argv[0], argv.data(), envp.data());
    dprintf(STDERR_FILENO, "kiln run: cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  setpgid(pid, pid);  // also here, so a kill right after fork reaches the group
  out[1].reset();
  beat[1].reset();
  fcntl(out[0].get(), F_SETFL, O_NONBLOCK);
  w->pid = pid;
  w->out_fd = std::move(out[0]);
  w->heartbeat_fd = std::move(beat[0]);
  workers_.push_back(std::move(w));
  return Status::ok();
}

WorkerGroup::~WorkerGroup() { kill_all(); }

void WorkerGroup::pump(Clock::duration wait) {
  std::vector<pollfd> fds;
  for (auto& w : workers_) {
    if (w->out_fd.valid()) fds.push_back({w->out_fd.get(), POLLIN, 0});
    if (w->heartbeat_fd.valid()) fds.push_back({w->heartbeat_fd.get(), POLLIN, 0});
  }
  int ms = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(wait).count());
  if (!fds.empty()) {
    ::poll(fds.data(), fds.size(), ms);
  } else if (ms > 0) {
    // Nothing to read: wait for a child to exit instead (bounded).
    struct timespec ts {
      ms / 1000, (ms % 1000) * 1000000L
    };
    nanosleep(&ts, nullptr);
  }
  auto now = Clock::now();
  for (auto& w : workers_) {
    char buf[65536];
    ssize_t r;
    if (w->heartbeat_fd.valid()) {
      while ((r = read(w->heartbeat_fd.get(), buf, sizeof(buf))) > 0) {
        // Note [What a heartbeat byte means] (worker_link.h): NUL is alive, busy.
        w->beats += r - std::count(buf, buf + r, '\0');
        w->beat_seen = true;
        w->last_beat = now;
      }
      if (r == 0) w->heartbeat_fd.reset();
    }
    if (w->out_fd.valid()) {
      while ((r = read(w->out_fd.get(), buf, sizeof(buf))) > 0) {
        w->output->append(buf, static_cast<size_t>(r));
      }
      if (r == 0) {
        w->output->flush();
        w->out_fd.reset();
      }
    }
  }
}

void WorkerGroup::reap() {
  for (auto& w : workers_) {
    if (w->exited) continue;
    if (waitpid(w->pid, &w->status, WNOHANG) == w->pid) w->exited = true;
  }
}

WorkerGroupState WorkerGroup::poll(Clock::duration wait) {
  pump(wait);
  reap();
  WorkerGroupState state;
  auto now = Clock::now();
  std::int64_t hung_beats = 0;
  for (auto& w : workers_) {
    if (!w->exited) {
      ++state.running;
      bool beating = w->beat_seen;
      auto limit = beating ? spec_.hang_timeout : spec_.startup_timeout;
      auto since = beating ? w->last_beat : started_at_;
      // Ranks block on the one that hangs, so several go quiet together:
      // name the one that got least far.
      bool first_hung = state.kind == WorkerGroupState::Kind::kRunning;
      bool further_behind = state.kind == WorkerGroupState::Kind::kHung && w->beats < hung_beats;
      if (limit.count() > 0 && now - since > limit && (first_hung || further_behind)) {
        hung_beats = w->beats;
        state.kind = WorkerGroupState::Kind::kHung;
        state.local_rank = w->local_rank;
        state.detail =
            beating
                ? fmt::format("no heartbeat for {:.1f} s (after {} steps; --hang-timeout {:.0f} s)",
                              seconds(now - since), w->beats, seconds(limit))
                : fmt::format("no first heartbeat within {:.1f} s of its start", seconds(limit));
      }
    } else if (!succeeded(w->status)) {
      // Report the cause rather than its echo: a worker that failed on a
      // peer (exit code 4) yields to one that failed on its own.
      int code = WIFEXITED(w->status) ? WEXITSTATUS(w->status) : -1;
      bool more_telling = state.kind == WorkerGroupState::Kind::kFailed &&
                          state.exit_code == kPeerFailureExitCode && code != kPeerFailureExitCode;
      if (state.kind != WorkerGroupState::Kind::kFailed || more_telling) {
        state.kind = WorkerGroupState::Kind::kFailed;
        state.local_rank = w->local_rank;
        state.detail = describe_exit(w->status);
        state.exit_code = code;
      }
    }
  }
  if (state.kind == WorkerGroupState::Kind::kRunning && state.running == 0) {
    state.kind = WorkerGroupState::Kind::kSucceeded;
  }
  return state;
}

void WorkerGroup::signal_all(int signal) {
  for (auto& w : workers_) {
    if (!w->exited) kill(-w->pid, signal);
  }
}

int WorkerGroup::stop(Clock::duration grace) {
  signal_all(SIGTERM);
  Deadline deadline = Deadline::after(grace);
  while (!deadline.expired()) {
    WorkerGroupState s =
        poll(std::min<Clock::duration>(std::chrono::milliseconds(50), deadline.remaining()));
    if (s.running == 0) break;
  }
  int clean = 0;
  for (auto& w : workers_) {
    if (w->exited && succeeded(w->status)) ++clean;
  }
  kill_all();
  return clean;
}

void WorkerGroup::kill_all() {
  for (auto& w : workers_) {
    if (w->exited) continue;
    kill(-w->pid, SIGKILL);
    kill(w->pid, SIGKILL);
    waitpid(w->pid, &w->status, 0);
    w->exited = true;
  }
  // Drain what they wrote before dying, then close.
  for (auto& w : workers_) {
    if (w->out_fd.valid()) {
      char buf[65536];
      ssize_t r;
      while ((r = read(w->out_fd.get(), buf, sizeof(buf))) > 0) {
        w->output->append(buf, static_cast<size_t>(r));
      }
      w->output->flush();
      w->out_fd.reset();
    }
    w->heartbeat_fd.reset();
  }
}

std::int64_t WorkerGroup::heartbeats() const {
  std::int64_t n = 0;
  for (const auto& w : workers_) n += w->beats;
  return n;
}

}  // namespace kiln::elastic
