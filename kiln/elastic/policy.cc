#include "kiln/elastic/policy.h"

#include <fmt/format.h>

namespace kiln::elastic {
namespace {

BackoffOptions backoff_options(const PolicyOptions& o) {
  return BackoffOptions{.base = o.backoff_base, .cap = o.backoff_cap, .max_attempts = 0};
}

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

std::string_view failure_kind_name(FailureKind kind) {
  switch (kind) {
    case FailureKind::kWorkerExit:
      return "worker_exit";
    case FailureKind::kWorkerHang:
      return "worker_hang";
    case FailureKind::kCommError:
      return "comm_error";
    case FailureKind::kNodeLost:
      return "node_lost";
  }
  return "unknown";
}

std::string_view failure_class_name(FailureClass c) {
  return c == FailureClass::kTransient ? "transient" : "permanent";
}

std::string_view action_name(Action a) {
  switch (a) {
    case Action::kRestartGroup:
      return "restart_group";
    case Action::kExcludeNode:
      return "exclude_node";
    case Action::kGiveUp:
      return "give_up";
  }
  return "unknown";
}

RecoveryPolicy::RecoveryPolicy(PolicyOptions options)
    : options_(options), backoff_(backoff_options(options)) {}

Decision RecoveryPolicy::decide(const Failure& failure, int restarts,
                                Clock::time_point group_started, Clock::time_point now) {
  if (now - group_started >= options_.healthy_after) backoff_ = Backoff(backoff_options(options_));

  auto& history = failures_by_node_[failure.node];
  if (failure.kind != FailureKind::kCommError) history.push_back(now);
  while (!history.empty() && now - history.front() > options_.node_failure_window) {
    history.pop_front();
  }

  Decision d;
  if (failure.kind == FailureKind::kNodeLost) {
    d.failure_class = FailureClass::kPermanent;
    d.action = Action::kExcludeNode;
    d.reason = fmt::format("node {} is gone: {}", failure.node, failure.detail);
  } else if (static_cast<int>(history.size()) >= options_.node_failure_limit) {
    d.failure_class = FailureClass::kPermanent;
    d.action = Action::kExcludeNode;
    d.reason = fmt::format("node {} failed {} times within {:.0f} s", failure.node, history.size(),
                           seconds(options_.node_failure_window));
  } else {
    d.failure_class = FailureClass::kTransient;
    d.action = Action::kRestartGroup;
    d.reason = fmt::format("every node is alive: {} on node {} is treated as transient",
                           failure_kind_name(failure.kind), failure.node);
  }
  if (restarts >= options_.max_restarts) {
    d.action = Action::kGiveUp;
    d.reason += fmt::format("; but the job already restarted after {} failures (--max-restarts {})",
                            restarts, options_.max_restarts);
    return d;
  }
  // A permanent failure re-forms at once: waiting would not bring the node back.
  if (d.action == Action::kRestartGroup) d.delay = backoff_.next_delay();
  return d;
}

}  // namespace kiln::elastic
