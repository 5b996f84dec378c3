// Agent: `kiln run` on one node. Joins a rendezvous round, runs the node's
// workers, watches them (exit, hang), the other nodes (heartbeats) and the
// round (someone re-forming, nodes waiting to join), and turns what it sees
// into a RecoveryPolicy decision, carried out and logged as one JSON line:
//
//   {"event":"worker_exit","node":"a","local_rank":1,"detail":"killed by signal 9 (Killed)",
//    "class":"transient","action":"restart_group","delay_s":0.71,"generation":2,...}
//
// Note [Stopping at a checkpoint boundary]: to shrink or grow the group
// without losing steps (preemption, a node waiting to join) the agent
// writes "g{G}/stopping" and sends its workers SIGTERM; WorkerLink turns
// that into a stop flag the trainer agrees on across ranks, so all of them
// checkpoint the same step and exit 0. An agent whose workers exit 0 reads
// "g{G}/stopping" to tell that stop from the end of training.
#pragma once

#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"
#include "kiln/elastic/liveness.h"
#include "kiln/elastic/policy.h"
#include "kiln/elastic/rendezvous.h"
#include "kiln/elastic/restart_budget.h"
#include "kiln/elastic/worker_group.h"
#include "kiln/store/store.h"
#include "kiln/store/tcp/server.h"

namespace kiln::elastic {

struct AgentOptions {
  std::vector<std::string> command;
  std::string run_id = "default";
  NodeInfo self;
  int min_nodes = 1;
  int max_nodes = 1;
  int nproc_per_node = 1;
  // Where workers reach the store they form their communicator through.
  std::string master_addr = "127.0.0.1";
  int master_port = 0;
  PolicyOptions policy;
  Clock::duration hang_timeout = std::chrono::seconds(30);
  Clock::duration startup_timeout = std::chrono::minutes(5);
  Clock::duration node_ttl = std::chrono::seconds(10);
  Clock::duration last_call = std::chrono::seconds(2);
  Clock::duration join_timeout = std::chrono::minutes(10);
  Clock::duration stop_grace = std::chrono::seconds(30);
  Clock::duration monitor_interval = std::chrono::milliseconds(100);
  // This agent serves the store: after its workers finish it waits (up to
  // `finish_linger`) for the other nodes to finish before it exits.
  bool hosts_store = false;
  // The rendezvous store is not one workers can form a communicator
  // through (etcd): the agent of group rank 0 serves a TCP store for each
  // round's workers at self.addr and publishes it as "gG/master";
  // master_addr/master_port are then unused.
  bool serve_worker_store = false;
  // The job token the worker store requires (the workers find it in
  // KILN_JOB_TOKEN); empty: not authenticated.
  std::string job_token;
  Clock::duration finish_linger = std::chrono::seconds(60);
  std::string events_path;  // JSON lines with wall-clock times; empty = none
  // How nodes show they are alive; unset: heartbeat counters in the job store.
  LivenessBackend liveness;
  // How a waiting rendezvous learns of changes (etcd's watch); unset: it polls.
  std::shared_ptr<ChangeFeed> changes;
};

class Agent {
 public:
  Agent(std::shared_ptr<store::Store> job_store, AgentOptions options);
  ~Agent();

  // Runs the job to its end: ok once this node's workers finished training,
  // or were stopped by request_stop(); an error when restarts are used up,
  // the node excluded itself, or the rendezvous failed.
  Status run();

  // Preemption: stop at a checkpoint boundary and leave the job (safe to
  // call from a signal handler: it only sets a flag).
  void request_stop() { stop_requested_.store(true); }

 private:
  enum class Outcome {
    kFinished,
    kLocalFailure,
    kPeerLost,
    kReformed,
    kScaleUp,
    kPreempted,
    kStoreLost
  };
  struct Observation {
    Outcome outcome = Outcome::kFinished;
    Failure failure;
    std::int64_t next_generation = 0;
    int lost_nodes = 0;
  };
  Result<Round> join(std::int64_t floor);
  void note_store_error(const Status& s);
  template <typename T>
  void note_store_error(const Result<T>& r) {
    note_store_error(r.status());
  }
  Observation monitor(const Round& round, WorkerGroup& group);
  Status finish(const Round& round, bool hosting);
  // Where this round's workers meet (see serve_worker_store); starts
  // `server` when this node serves it.
  Result<std::pair<std::string, int>> worker_store(
      const Round& round, std::unique_ptr<store::tcp::TcpStoreServer>& server);
  // Rendezvous' running_round_gone: every node of `round` lost or finished.
  bool round_gone(const Round& round);
  void event(const std::string& name, const Round* round, const Failure* failure,
             const Decision* decision, const std::string& note = "");

  int restarts_ = 0;  // failures before the current round (budget_)

  std::shared_ptr<store::Store> store_;
  AgentOptions options_;
  Rendezvous rendezvous_;
  RecoveryPolicy policy_;
  RestartBudget budget_;  // Note [Counting restarts across agents]
  std::atomic<bool> stop_requested_{false};
  std::FILE* events_ = nullptr;
  LivenessBackend liveness_;
  std::unique_ptr<LivenessPublisher> alive_;      // this node's, for the agent's lifetime
  std::unique_ptr<LivenessObserver> gone_watch_;  // nodes of the round we wait on
  std::int64_t gone_watch_generation_ = 0;
};

}  // namespace kiln::elastic
