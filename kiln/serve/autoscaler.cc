#include "kiln/serve/autoscaler.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

namespace kiln::serve {

std::string Decision::to_json() const {
  return nlohmann::json{{"time", time_s},     {"metric", metric},   {"value", value},
                        {"current", current}, {"desired", desired}, {"reason", reason}}
      .dump();
}

Autoscaler::Autoscaler(AutoscalerOptions options) : options_(std::move(options)) {
  options_.min_replicas = std::max(1, options_.min_replicas);
  options_.max_replicas = std::max(options_.min_replicas, options_.max_replicas);
  if (options_.target <= 0) options_.target = 1;
}

Decision Autoscaler::decide(double now_s, int current, double metric) {
  const AutoscalerOptions& o = options_;
  Decision d{now_s, o.metric_name, metric, current, current, ""};
  current = std::max(current, 0);

  // 1. The raw recommendation from the metric.
  int raw;
  if (current == 0) {
    raw = static_cast<int>(std::ceil(metric / o.target));
    d.reason = "no replicas";
  } else {
    const double ratio = (metric / current) / o.target;
    if (std::abs(ratio - 1) <= o.tolerance) {
      raw = current;
      d.reason = fmt::format("within tolerance ({:.2f} per replica, target {})", metric / current,
                             o.target);
    } else {
      raw = static_cast<int>(std::ceil(metric / o.target - 1e-9));
      d.reason = fmt::format("{:.2f} per replica vs target {}", metric / current, o.target);
    }
  }
  raw = std::clamp(raw, o.min_replicas, o.max_replicas);

  // 2. Stabilization windows over the recommendations.
  recommendations_.push_back({now_s, raw});
  const double keep = std::max(o.up_window_s, o.down_window_s);
  while (!recommendations_.empty() && recommendations_.front().time_s < now_s - keep) {
    recommendations_.pop_front();
  }
  int up_rec = raw, down_rec = raw;
  for (const auto& r : recommendations_) {
    if (r.time_s >= now_s - o.up_window_s) up_rec = std::min(up_rec, r.replicas);
    if (r.time_s >= now_s - o.down_window_s) down_rec = std::max(down_rec, r.replicas);
  }
  int desired = current;
  if (desired < up_rec) desired = up_rec;
  if (desired > down_rec) desired = down_rec;
  if (desired != raw) {
    d.reason +=
        fmt::format("; {} {} held to {} by the {} stabilization window ({} s)",
                    raw > current ? "scale up to" : "scale down to", raw, desired,
                    raw > current ? "up" : "down", raw > current ? o.up_window_s : o.down_window_s);
  }

  // 3. Rate limits per period, from the replicas at the period's start.
  const double oldest = std::max(o.up_period_s, o.down_period_s);
  while (!events_.empty() && events_.front().time_s < now_s - oldest) events_.pop_front();
  int added = 0, removed = 0;
  for (const auto& e : events_) {
    if (e.change > 0 && e.time_s >= now_s - o.up_period_s) added += e.change;
    if (e.change < 0 && e.time_s >= now_s - o.down_period_s) removed -= e.change;
  }
  if (desired > current) {
    const int start = current - added;
    const int limit =
        std::max(start + o.up_pods, static_cast<int>(std::ceil(start * (1 + o.up_percent / 100))));
    if (desired > limit) {
      d.reason += fmt::format("; rate limited to {} (at most max(+{}, +{}%) per {} s)", limit,
                              o.up_pods, o.up_percent, o.up_period_s);
      desired = std::max(current, limit);
    }
  } else if (desired < current) {
    const int start = current + removed;
    const int limit = static_cast<int>(std::ceil(start * (1 - o.down_percent / 100)));
    if (desired < limit) {
      d.reason += fmt::format("; rate limited to {} (at most -{}% per {} s)", limit, o.down_percent,
                              o.down_period_s);
      desired = std::min(current, limit);
    }
  }
  desired = std::clamp(desired, o.min_replicas, o.max_replicas);
  if (desired != current) events_.push_back({now_s, desired - current});
  d.desired = desired;
  if (desired > current) {
    d.reason = "scale up: " + d.reason;
  } else if (desired < current) {
    d.reason = "scale down: " + d.reason;
  } else {
    d.reason = "hold: " + d.reason;
  }
  return d;
}

}  // namespace kiln::serve
