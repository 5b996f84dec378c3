// Autoscaler: how many replicas a fleet should run, from one metric (the
// request queue), with the Kubernetes HorizontalPodAutoscaler's algorithm as
// the reference (pkg/controller/podautoscaler: replica_calculator.go and
// horizontal.go's stabilizeRecommendationWithBehaviors and
// convertDesiredReplicasWithBehaviorRate):
//
//   ratio   = (metric / current) / target            per-replica load vs target
//   raw     = current                   if |ratio - 1| <= tolerance
//           = ceil(metric / target)     otherwise (the design's rule:
//                                       replicas = queue / target queue per replica)
//   stabilized: up   to the smallest recommendation of the last up-window
//               down to the largest  recommendation of the last down-window
//               (default 0 s and 300 s: scale up at once, down only after
//               the load stayed low for the whole window)
//   rate limit: at most max(+pods, +percent) added and -percent removed
//               per period, counted from the replicas at the period's start
//   clamp:      [min_replicas, max_replicas]
//
// Pure: time comes in as an argument, so the live fleet and the simulator
// run the same code. Not thread-safe; one controller owns it.
#pragma once

#include <deque>
#include <string>

namespace kiln::serve {

struct AutoscalerOptions {
  int min_replicas = 1;
  int max_replicas = 4;
  double target = 4;           // metric per replica (queued + running requests)
  double tolerance = 0.1;      // HPA's default
  double up_window_s = 0;      // HPA behavior.scaleUp.stabilizationWindowSeconds default
  double down_window_s = 300;  // HPA behavior.scaleDown.stabilizationWindowSeconds default
  // HPA behavior defaults: up max(+4 pods, +100%) per 15 s; down -100% per 15 s.
  int up_pods = 4;
  double up_percent = 100;
  double up_period_s = 15;
  double down_percent = 100;
  double down_period_s = 15;
  std::string metric_name = "queue";
};

struct Decision {
  double time_s = 0;
  std::string metric;
  double value = 0;
  int current = 0;
  int desired = 0;
  std::string reason;

  // One JSON line: {"time": .., "metric": .., "value": .., "current": ..,
  // "desired": .., "reason": ..}
  std::string to_json() const;
};

class Autoscaler {
 public:
  explicit Autoscaler(AutoscalerOptions options);

  // The decision at `now_s` for a fleet of `current` replicas whose summed
  // metric is `metric`. Assumes the caller applies it (it is remembered as
  // a scale event for the rate limits).
  Decision decide(double now_s, int current, double metric);

  const AutoscalerOptions& options() const { return options_; }

 private:
  struct Recommendation {
    double time_s;
    int replicas;
  };
  struct ScaleEvent {
    double time_s;
    int change;  // + added, - removed
  };

  AutoscalerOptions options_;
  std::deque<Recommendation> recommendations_;
  std::deque<ScaleEvent> events_;
};

}  // namespace kiln::serve
