#include "kiln/serve/simulator.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <deque>
#include <numbers>
#include <random>

namespace kiln::serve {
namespace {

// Latencies in log-spaced bins, 0.1 ms .. 100 s, 40 per decade.
class LatencyHistogram {
 public:
  static constexpr int kBins = 241;
  void add(double seconds, double count) {
    int i = static_cast<int>(std::ceil(std::log10(std::max(seconds, 1e-4) / 1e-4) * 40));
    bins_[static_cast<std::size_t>(std::clamp(i, 0, kBins - 1))] += count;
    total_ += count;
  }
  // The upper edge of the bin holding quantile q (0 when empty).
  double quantile(double q) const {
    if (total_ <= 0) return 0;
    double seen = 0;
    for (int i = 0; i < kBins; ++i) {
      seen += bins_[static_cast<std::size_t>(i)];
      if (seen >= q * total_) return 1e-4 * std::pow(10.0, i / 40.0);
    }
    return 100;
  }
  void clear() {
    bins_.fill(0);
    total_ = 0;
  }
  double total() const { return total_; }

 private:
  std::array<double, kBins> bins_{};
  double total_ = 0;
};

// Standard normal quantiles at the midpoints of 16 equal-mass bins.
constexpr std::array<double, 16> kJitterQuantiles = {-1.863, -1.318, -1.010, -0.776, -0.579, -0.402,
                                                     -0.237, -0.078, 0.078,  0.237,  0.402,  0.579,
                                                     0.776,  1.010,  1.318,  1.863};

struct Cohort {
  double arrived;
  double count;
};

// Burst k of the diurnal trace: a deterministic start in [600k, 600k + 540).
double burst_start(std::uint64_t seed, int k) {
  std::mt19937_64 g(seed * 7919 + static_cast<std::uint64_t>(k));
  return 600.0 * k + std::uniform_real_distribution<double>(0, 540)(g);
}

}  // namespace

double default_queue_target(const ServiceModel& svc, double utilisation) {
  // The batch size b where b / (base + per_item b) = lambda, times that
  // batch's time (Little's law). Past capacity the queue grows without bound.
  const double lambda = utilisation * svc.capacity_rps();
  const double b = std::clamp(lambda * svc.base_s / (1 - lambda * svc.per_item_s), 1.0,
                              static_cast<double>(svc.max_batch));
  return std::max(1.0, lambda * (svc.base_s + svc.per_item_s * b));
}

double trace_rate(const TraceOptions& tr, double t) {
  switch (tr.kind) {
    case TraceKind::kSteady:
      return tr.peak_rps;
    case TraceKind::kStep:
      return (t >= tr.duration_s / 3 && t < 2 * tr.duration_s / 3) ? tr.peak_rps : tr.peak_rps / 8;
    case TraceKind::kDiurnal: {
      // One compressed day: 20% of peak at night, 80% at noon, plus bursts
      // of +20% of peak for 60 s about every 10 minutes.
      const double day = 0.5 - 0.5 * std::cos(2 * std::numbers::pi * t / tr.duration_s);
      double rate = tr.peak_rps * (0.2 + 0.6 * day);
      const int k = static_cast<int>(t / 600);
      const double start = burst_start(tr.seed, k);
      if (t >= start && t < start + 60) rate += 0.2 * tr.peak_rps;
      return rate;
    }
  }
  return 0;
}

Result<TraceKind> parse_trace_kind(const std::string& name) {
  if (name == "steady") return TraceKind::kSteady;
  if (name == "step") return TraceKind::kStep;
  if (name == "diurnal") return TraceKind::kDiurnal;
  return invalid_argument(fmt::format("trace '{}': expected steady, step or diurnal", name));
}

std::string trace_kind_name(TraceKind kind) {
  switch (kind) {
    case TraceKind::kSteady:
      return "steady";
    case TraceKind::kStep:
      return "step";
    case TraceKind::kDiurnal:
      return "diurnal";
  }
  return "?";
}

std::string policy_name(PolicyKind kind) {
  switch (kind) {
    case PolicyKind::kStaticPeak:
      return "static_peak";
    case PolicyKind::kCpu:
      return "cpu_hpa";
    case PolicyKind::kQueue:
      return "queue";
  }
  return "?";
}

int static_peak_replicas(const SimOptions& o) {
  double peak = 0;
  for (double t = 0; t < o.trace.duration_s; t += 1) peak = std::max(peak, trace_rate(o.trace, t));
  return std::max(
      1, static_cast<int>(std::ceil(peak / (o.service.capacity_rps() * o.static_utilisation))));
}

SimResult simulate(const SimOptions& o, PolicyKind policy) {
  const ServiceModel& svc = o.service;
  const int static_n = static_peak_replicas(o);
  const int max_n = o.max_replicas > 0 ? o.max_replicas : static_n * 3 / 2 + 1;
  const double queue_target =
      o.queue_target > 0 ? o.queue_target : default_queue_target(svc, o.queue_utilisation);

  AutoscalerOptions a = o.behavior;
  a.min_replicas = 1;
  a.max_replicas = max_n;
  a.target = policy == PolicyKind::kCpu ? o.cpu_target : queue_target;
  a.metric_name = policy == PolicyKind::kCpu ? "cpu" : "queue";
  Autoscaler autoscaler(a);

  std::mt19937_64 arrivals_rng(o.trace.seed);  // the same requests for every policy
  std::mt19937_64 jitter_rng(o.trace.seed + 1);
  std::normal_distribution<double> fleet_normal(0, 1);

  // Replicas: the time each becomes ready, oldest first.
  std::vector<double> ready_at;
  int warm_slots = 0;  // replica slots on nodes that hold the weights
  auto start_replicas = [&](int n, double now, bool instant) {
    for (int i = 0; i < n; ++i) {
      const int slot = static_cast<int>(ready_at.size());
      const bool cached = slot < warm_slots;
      ready_at.push_back(instant ? now
                                 : now + (cached ? svc.cold_start_cached_s : svc.cold_start_s));
      const int per = std::max(1, svc.replicas_per_node);
      warm_slots = std::max(warm_slots, (slot / per + 1) * per);  // its node is warm now
    }
  };
  const int initial =
      policy == PolicyKind::kStaticPeak
          ? static_n
          : std::max(1, static_cast<int>(std::ceil(trace_rate(o.trace, 0) /
                                                   (svc.capacity_rps() * o.static_utilisation))));
  start_replicas(initial, 0, true);

  SimResult r;
  r.policy = policy_name(policy);
  std::deque<Cohort> queue;
  double queued = 0;
  LatencyHistogram window, all;
  double metric_sum = 0;
  int metric_samples = 0;
  double next_sync = o.sync_period_s, next_window = o.window_s;
  const int steps = static_cast<int>(std::ceil(o.trace.duration_s / o.dt_s));
  int ready = 0;
  double next_ready = 0;
  for (int s = 1; s <= steps; ++s) {
    const double t = s * o.dt_s;
    const double mean = trace_rate(o.trace, t) * o.dt_s;
    const double n_arrived =
        mean > 0 ? static_cast<double>(std::poisson_distribution<std::int64_t>(mean)(arrivals_rng))
                 : 0;
    if (n_arrived > 0) {
      queue.push_back({t, n_arrived});
      queued += n_arrived;
      r.requests += static_cast<std::uint64_t>(n_arrived);
    }
    if (t >= next_ready) {  // recount only when a replica may have become ready
      ready = 0;
      next_ready = 1e300;
      for (double at : ready_at) {
        if (at <= t)
          ++ready;
        else
          next_ready = std::min(next_ready, at);
      }
    }
    double utilisation = 0, in_service = 0;
    if (ready > 0 && queued > 0) {
      const double b = std::clamp(queued / ready, 1.0, static_cast<double>(svc.max_batch));
      const double mean_batch_s = svc.base_s + svc.per_item_s * b;
      // The fleet's capacity: each replica's batch time jitters on its own,
      // so the fleet's mean jitters by sigma / sqrt(ready).
      const double fleet_jitter = std::exp(fleet_normal(jitter_rng) * svc.jitter_sigma /
                                           std::sqrt(static_cast<double>(ready)));
      const double batch_s = mean_batch_s * fleet_jitter;
      const double capacity = ready * b / batch_s * o.dt_s;
      double served = std::min(queued, capacity);
      utilisation = served / capacity;
      in_service = served / o.dt_s * batch_s;  // Little's law over this step
      queued -= served;
      while (served > 1e-9 && !queue.empty()) {
        Cohort& c = queue.front();
        const double take = std::min(served, c.count);
        // A request's own batch time: spread over the jitter distribution.
        for (double z : kJitterQuantiles) {
          const double latency = (t - c.arrived) + mean_batch_s * std::exp(z * svc.jitter_sigma);
          window.add(latency, take / kJitterQuantiles.size());
          all.add(latency, take / kJitterQuantiles.size());
        }
        c.count -= take;
        served -= take;
        if (c.count <= 1e-9) queue.pop_front();
      }
    }
    metric_sum += policy == PolicyKind::kCpu ? utilisation * ready : queued + in_service;
    ++metric_samples;
    r.replica_seconds += static_cast<double>(ready_at.size()) * o.dt_s;

    if (policy != PolicyKind::kStaticPeak && t >= next_sync) {
      next_sync += o.sync_period_s;
      const int current = static_cast<int>(ready_at.size());
      Decision d = autoscaler.decide(t, current, metric_sum / std::max(1, metric_samples));
      metric_sum = 0;
      metric_samples = 0;
      if (d.desired > current) start_replicas(d.desired - current, t, false);
      if (d.desired < current) ready_at.resize(static_cast<std::size_t>(d.desired));  // newest go
      next_ready = t;                                                                 // recount
    }
    if (t >= next_window - 1e-9) {
      next_window += o.window_s;
      // Requests still waiting count at their age so far: an overload shows.
      for (const Cohort& c : queue) window.add(t - c.arrived, c.count);
      const double p99 = window.quantile(0.99);
      r.series.push_back({t, trace_rate(o.trace, t), static_cast<int>(ready_at.size()), p99});
      if (window.total() > 0 && p99 > o.slo_s) ++r.slo_violations;
      window.clear();
    }
  }
  for (const Cohort& c : queue) all.add(o.trace.duration_s - c.arrived, c.count);
  r.p99_s = all.quantile(0.99);
  r.slo_met_fraction =
      r.series.empty() ? 1 : 1.0 - static_cast<double>(r.slo_violations) / r.series.size();
  return r;
}

std::string simulation_svg(const SimOptions& o, const std::vector<SimResult>& results) {
  constexpr int kW = 900, kH = 180, kLeft = 70, kGap = 50;
  static const char* kColors[] = {"#888888", "#d95f02", "#1b9e77", "#7570b3"};
  const double T = o.trace.duration_s;
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" "
      "fill=\"white\"/>\n<text x=\"{}\" y=\"20\" font-size=\"15\" font-weight=\"bold\">Fleet "
      "simulation: {} trace, peak {:.0f} req/s, SLO p99 &lt;= {:.0f} ms</text>\n",
      kW + kLeft + 160, 3 * (kH + kGap) + 40, kLeft, trace_kind_name(o.trace.kind),
      o.trace.peak_rps, o.slo_s * 1000);
  auto panel = [&](int index, const std::string& title, double ymax, auto value, bool load_only,
                   double hline) {
    const int top = 40 + index * (kH + kGap);
    svg += fmt::format("<text x=\"{}\" y=\"{}\" font-weight=\"bold\">{}</text>\n", kLeft, top - 6,
                       title);
    svg += fmt::format(
        "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" "
        "stroke=\"#ccc\"/>\n",
        kLeft, top, kW, kH);
    svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.4g}</text>\n", kLeft - 4,
                       top + 10, ymax);
    svg +=
        fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">0</text>\n", kLeft - 4, top + kH);
    if (hline > 0) {
      const double y = top + kH - std::min(hline / ymax, 1.0) * kH;
      svg += fmt::format(
          "<line x1=\"{}\" x2=\"{}\" y1=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"red\" "
          "stroke-dasharray=\"4 3\"/>\n",
          kLeft, kLeft + kW, y, y);
    }
    for (std::size_t p = 0; p < (load_only ? 1 : results.size()); ++p) {
      std::string points;
      for (const SimPoint& pt : results[p].series) {
        const double x = kLeft + pt.t / T * kW;
        const double y = top + kH - std::min(value(pt) / ymax, 1.0) * kH;
        points += fmt::format("{:.1f},{:.1f} ", x, y);
      }
      const char* color = load_only ? "#333" : kColors[(p + 1) % 4];
      svg += fmt::format(
          "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" "
          "points=\"{}\"/>\n",
          color, points);
      if (!load_only) {
        svg += fmt::format("<text x=\"{}\" y=\"{}\" fill=\"{}\">{}</text>\n", kLeft + kW + 8,
                           top + 16 + 16 * static_cast<int>(p), color, results[p].policy);
      }
    }
  };
  double max_load = 1, max_replicas = 1;
  for (const auto& r : results) {
    for (const auto& pt : r.series) {
      max_load = std::max(max_load, pt.load_rps);
      max_replicas = std::max(max_replicas, static_cast<double>(pt.replicas));
    }
  }
  if (results.empty()) return svg + "</svg>\n";
  panel(
      0, "load (requests/s)", max_load * 1.1, [](const SimPoint& p) { return p.load_rps; }, true,
      0);
  panel(
      1, "replicas", max_replicas * 1.1,
      [](const SimPoint& p) { return static_cast<double>(p.replicas); }, false, 0);
  panel(
      2, "p99 latency per window (ms; clipped at 5 x SLO; red: SLO)", o.slo_s * 5000,
      [](const SimPoint& p) { return p.p99_s * 1000; }, false, o.slo_s * 1000);
  svg += "</svg>\n";
  return svg;
}

}  // namespace kiln::serve
