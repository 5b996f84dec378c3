// Recovery policy: what a failure means and what to do about it. Pure (no
// processes, no store): the agent feeds it what it observed and carries out
// the decision, so every rule here is unit-tested on its own.
//
//   transient  a worker exited, hung or hit a comm error while every node is
//              still alive -> restart the whole worker group (a new
//              rendezvous round with the same nodes) after an exponential
//              backoff with jitter (1 s base, 30 s cap);
//   permanent  a node is lost, or one node failed `node_failure_limit`
//              times within `node_failure_window` -> re-form without it;
//   give up    `max_restarts` restarts after failures are used up (re-forms
//              for a scale-up, scale-down or preemption do not count).
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <string_view>

#include "kiln/base/backoff.h"
#include "kiln/base/deadline.h"

namespace kiln::elastic {

enum class FailureKind {
  kWorkerExit,  // a worker exited non-zero or was killed
  kWorkerHang,  // a worker stopped heartbeating for the hang timeout
  // A worker exited with kiln's code for a peer or communication failure
  // (4: Aborted, Unavailable, DeadlineExceeded; docs/errors.md). The cause
  // is usually elsewhere, so it does not count against this node.
  kCommError,
  kNodeLost,  // another node's heartbeat stopped for the TTL
};
std::string_view failure_kind_name(FailureKind kind);

struct Failure {
  FailureKind kind = FailureKind::kWorkerExit;
  std::string node;  // the node it happened on
  int local_rank = -1;
  std::string detail;  // "killed by signal 9", "no heartbeat for 30.0 s"
};

enum class FailureClass { kTransient, kPermanent };
std::string_view failure_class_name(FailureClass c);

enum class Action {
  kRestartGroup,  // same nodes, next round, after `delay`
  kExcludeNode,   // next round without `failure.node` (others re-form)
  kGiveUp,        // restarts used up: stop the job with an error
};
std::string_view action_name(Action a);

struct Decision {
  FailureClass failure_class = FailureClass::kTransient;
  Action action = Action::kRestartGroup;
  Clock::duration delay{};
  std::string reason;  // why, in words, for the log line
};

struct PolicyOptions {
  int max_restarts = 3;
  Clock::duration backoff_base = std::chrono::seconds(1);
  Clock::duration backoff_cap = std::chrono::seconds(30);
  int node_failure_limit = 3;
  Clock::duration node_failure_window = std::chrono::minutes(10);
  // A group that ran this long without failing resets the backoff.
  Clock::duration healthy_after = std::chrono::minutes(1);
};

class RecoveryPolicy {
 public:
  explicit RecoveryPolicy(PolicyOptions options);

  // `restarts` is how many times the job restarted after a failure so far
  // (restart_budget.h); `group_started` when the failed group started.
  Decision decide(const Failure& failure, int restarts, Clock::time_point group_started,
                  Clock::time_point now = Clock::now());

 private:
  PolicyOptions options_;
  Backoff backoff_;
  std::map<std::string, std::deque<Clock::time_point>> failures_by_node_;
};

}  // namespace kiln::elastic
