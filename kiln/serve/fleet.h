// Fleet: `kiln serve --replicas MIN:MAX --target-queue Q`. A router in front
// of replica processes on this host (each `kiln serve MODEL --port 0`), and a
// controller that resizes the fleet with the Autoscaler every sync period:
//
//   metric   the router's outstanding requests (kiln_serve_queue_length),
//            averaged over the period
//   up       spawn replicas; each joins the router once its /readyz is 200
//   down     the newest replica leaves the router first, then gets SIGTERM
//            and drains (answers what it holds) before it exits
//   death    a replica that exits on its own leaves the router (its
//            in-flight requests are retried on others by the router) and is
//            replaced at once
//
// Every decision is one JSON line in the decision log. SIGTERM or SIGINT
// stops the fleet: the router answers what it accepted, then every replica
// drains; exit 0.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/serve/autoscaler.h"
#include "kiln/serve/router.h"

namespace kiln::serve {

struct FleetOptions {
  std::string exe;                        // the kiln executable for replicas
  std::vector<std::string> replica_args;  // after `kiln serve`: MODEL and its flags
  RouterOptions router;
  AutoscalerOptions autoscaler;
  std::chrono::milliseconds sync_period{1000};
  std::string decision_log;  // JSON lines; "" = none
  double replica_start_timeout_s = 120;
};

// Runs until SIGTERM or SIGINT. Call from the main thread before other
// threads exist (it blocks the signals process-wide and waits for them).
Status run_fleet(const FleetOptions& options);

}  // namespace kiln::serve
