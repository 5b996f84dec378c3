// WorkerGroup: the local workers of one rendezvous round. Spawns them with
// the torchrun environment, forwards their output line by line with a rank
// prefix, reads their heartbeats, and reports the first thing that went
// wrong. Each worker runs in its own process group (so a kill reaches the
// processes it started) and dies with the agent (PR_SET_PDEATHSIG).
#pragma once

#include <sys/types.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"

namespace kiln::elastic {

struct WorkerGroupSpec {
  std::vector<std::string> command;
  int nproc_per_node = 1;
  int group_rank = 0;  // this node's place in the round
  int num_nodes = 1;
  // Kiln's store, which Kiln's workers form their communicator through
  // (KILN_STORE_ADDR, KILN_STORE_PORT).
  std::string store_addr;
  int store_port = 0;
  // MASTER_ADDR/MASTER_PORT: left free for the script's own store (Note
  // [The script's MASTER_PORT] in script_master.h).
  std::string master_addr;
  int master_port = 0;
  std::string run_id;
  std::int64_t generation = 1;
  int max_restarts = 0;
  // Restarts after failures so far (TORCHELASTIC_RESTART_COUNT): scale-ups,
  // scale-downs and preemptions do not count (restart_budget.h).
  int restart_count = 0;
  // Hang detection: after a worker's first heartbeat, at most
  // `hang_timeout` between two; before it, `startup_timeout`. Zero disables.
  Clock::duration hang_timeout = std::chrono::seconds(30);
  Clock::duration startup_timeout = std::chrono::minutes(5);
  std::map<std::string, std::string> extra_env;
};

// `kiln`'s exit code for Aborted, Unavailable and DeadlineExceeded
// (cli/command.cc, docs/errors.md): the worker failed on a peer.
inline constexpr int kPeerFailureExitCode = 4;

// What poll() saw.
struct WorkerGroupState {
  enum class Kind { kRunning, kSucceeded, kFailed, kHung };
  Kind kind = Kind::kRunning;
  int local_rank = -1;  // the worker that failed or hung
  std::string detail;   // "exited with code 1", "killed by signal 9 (Killed)"
  int exit_code = -1;   // for kFailed by exit (not by signal)
  int running = 0;      // workers not yet exited
};

class WorkerGroup {
 public:
  static Result<std::unique_ptr<WorkerGroup>> start(const WorkerGroupSpec& spec);
  ~WorkerGroup();  // kills and reaps what still runs

  // Forwards output and reads heartbeats for up to `wait`, then reports:
  // kFailed/kHung for the first worker that failed or hung, kSucceeded
  // once every worker exited 0, else kRunning.
  WorkerGroupState poll(Clock::duration wait);

  // Sends `signal` to every live worker's process group.
  void signal_all(int signal);

  // Asks the workers to stop (SIGTERM), gives them `grace` to exit, kills
  // the rest (SIGKILL) and reaps everything. Returns how many exited
  // cleanly (code 0) before the grace ran out.
  int stop(Clock::duration grace);

  // Kills every worker at once (SIGKILL) and reaps them.
  void kill_all();

  Clock::time_point started_at() const { return started_at_; }
  const WorkerGroupSpec& spec() const { return spec_; }
  // Steps the workers reported through their heartbeats, summed.
  std::int64_t heartbeats() const;

 private:
  struct Worker;
  explicit WorkerGroup(WorkerGroupSpec spec);
  Status spawn(int local_rank);
  void pump(Clock::duration wait);
  void reap();

  WorkerGroupSpec spec_;
  Clock::time_point started_at_;
  std::vector<std::unique_ptr<Worker>> workers_;
};

}  // namespace kiln::elastic
