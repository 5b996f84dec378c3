#include "kiln/comm/testing/multiprocess.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <thread>

#include <fmt/format.h>

#include "kiln/base/logging.h"
#include "kiln/store/file_store.h"

namespace kiln::comm::testing {

bool RunResult::ok() const {
  for (const auto& r : ranks) {
    if (r.exit_code != 0) return false;
  }
  return true;
}

RunResult run_ranks(int n, const std::function<Status(Communicator&)>& body, RunOptions options) {
  char tmpl[] = "/tmp/kiln-test-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  std::fflush(nullptr);
  std::vector<pid_t> pids;
  for (int rank = 0; rank < n; ++rank) {
    pid_t pid = fork();
    if (pid == 0) {
      for (const auto& [k, v] : options.env) setenv(k.c_str(), v.c_str(), 1);
      if (options.env_for_rank) {
        for (const auto& [k, v] : options.env_for_rank(rank)) setenv(k.c_str(), v.c_str(), 1);
      }
      set_log_rank(rank);
      Status s = [&]() -> Status {
        KILN_ASSIGN_OR_RETURN(auto store, store::FileStore::open(dir));
        CommOptions opts = options.comm;
        if (opts.connect.tag.empty()) opts.connect.tag = "test";
        KILN_ASSIGN_OR_RETURN(auto comm, Communicator::create(std::move(store), rank, n, opts));
        return body(*comm);
      }();
      if (!s.is_ok()) std::fprintf(stderr, "rank %d failed: %s\n", rank, s.to_string().c_str());
      std::fflush(nullptr);
      _exit(s.is_ok() ? 0 : 1);
    }
    pids.push_back(pid);
  }
  RunResult result;
  result.ranks.resize(n);
  auto started = std::chrono::steady_clock::now();
  auto deadline = started + options.deadline;
  int remaining = n;
  while (remaining > 0) {
    int status = 0;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      for (int r = 0; r < n; ++r) {
        if (pids[r] != pid) continue;
        if (WIFEXITED(status)) result.ranks[r].exit_code = WEXITSTATUS(status);
        if (WIFSIGNALED(status)) result.ranks[r].signal = WTERMSIG(status);
        result.ranks[r].exited_after_s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        --remaining;
      }
      continue;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      for (int r = 0; r < n; ++r) {
        if (result.ranks[r].exit_code == -1 && result.ranks[r].signal == 0) {
          result.ranks[r].timed_out = true;
          kill(pids[r], SIGKILL);
        }
      }
      while (remaining > 0 && waitpid(-1, &status, 0) > 0) --remaining;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // polling child exit, not syncing
  }
  for (int r = 0; r < n; ++r) {
    const auto& o = result.ranks[r];
    if (o.exit_code == 0) continue;
    result.report += fmt::format("rank {}: {}\n", r,
                                 o.timed_out ? "hung (killed at the deadline)"
                                 : o.signal ? fmt::format("killed by signal {}", o.signal)
                                            : fmt::format("exit code {}", o.exit_code));
  }
  std::filesystem::remove_all(dir);
  return result;
}

}  // namespace kiln::comm::testing
