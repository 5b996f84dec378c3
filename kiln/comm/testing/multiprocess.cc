#include "kiln/comm/testing/multiprocess.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
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

namespace {

// Where rank `rank` leaves its failed Status for the parent's report.
std::string status_path(const std::string& dir, int rank) {
  return fmt::format("{}/rank-{}.status", dir, rank);
}

// What `path` holds, "" if there is no such file.
std::string read_all(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string how_it_ended(const RankOutcome& o) {
  if (o.timed_out) return "hung (killed at the deadline)";
  const std::string how = o.signal != 0
                              ? fmt::format("killed by signal {} ({})", o.signal, strsignal(o.signal))
                              : fmt::format("exit code {}", o.exit_code);
  return fmt::format("{} after {:.3f} s", how, o.exited_after_s);
}

}  // namespace

RunResult run_ranks(int n, const std::function<Status(Communicator&)>& body, RunOptions options) {
  char tmpl[] = "/tmp/kiln-test-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  // The store in a directory of its own, beside the ranks' status files.
  const std::string store_dir = dir + "/store";
  std::filesystem::create_directory(store_dir);
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
        KILN_ASSIGN_OR_RETURN(auto store, store::FileStore::open(store_dir));
        CommOptions opts = options.comm;
        if (opts.connect.tag.empty()) opts.connect.tag = "test";
        KILN_ASSIGN_OR_RETURN(auto comm, Communicator::create(std::move(store), rank, n, opts));
        return body(*comm);
      }();
      if (!s.is_ok()) {
        std::fprintf(stderr, "rank %d failed: %s\n", rank, s.to_string().c_str());
        std::ofstream(status_path(dir, rank)) << s.to_string();
      }
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
  std::vector<int> failed;
  for (int r = 0; r < n; ++r) {
    result.ranks[r].status = read_all(status_path(dir, r));
    if (result.ranks[r].exit_code != 0) failed.push_back(r);
  }
  // First to exit first: the rank whose own failure started the abort.
  std::stable_sort(failed.begin(), failed.end(), [&](int a, int b) {
    const auto &x = result.ranks[a], &y = result.ranks[b];
    return !x.timed_out && (y.timed_out || x.exited_after_s < y.exited_after_s);
  });
  for (int r : failed) {
    const auto& o = result.ranks[r];
    result.report += fmt::format("rank {}: {}{}\n", r, how_it_ended(o),
                                 o.status.empty() ? "" : ": " + o.status);
  }
  std::filesystem::remove_all(dir);
  return result;
}

}  // namespace kiln::comm::testing
