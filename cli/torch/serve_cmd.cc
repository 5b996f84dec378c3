// `kiln serve MODEL_URL`: serves a checkpoint `kiln train` wrote over
// HTTP/JSON with dynamic batching (docs/serve.md).
#include <fmt/format.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/command.h"
#include "kiln/serve/fleet.h"
#include "kiln/serve/replica.h"
#include "kiln/serve/simulator.h"

namespace kiln::cli {
namespace {

struct ServeArgs {
  serve::ReplicaRunOptions replica;
  double cache_gib = 16;
  int max_queue_delay_us = 2000;
  // Fleet mode (--replicas MIN:MAX).
  std::string replicas;
  serve::AutoscalerOptions autoscaler;
  int sync_period_ms = 1000;
  std::string decision_log;
};

// `kiln serve --replicas MIN:MAX ...`: a router and replica processes, each
// a plain `kiln serve` of the same model with the same replica flags.
Status run_fleet(ServeArgs& a) {
  int lo = 0, hi = 0;
  char tail = 0;
  if (std::sscanf(a.replicas.c_str(), "%d:%d%c", &lo, &hi, &tail) != 2 || lo < 1 || hi < lo) {
    return invalid_argument(
        fmt::format("--replicas {}: expected MIN:MAX with 1 <= MIN <= MAX", a.replicas));
  }
  serve::FleetOptions f;
  f.exe = "/proc/self/exe";
  const auto& r = a.replica;
  f.replica_args = {r.model_url,
                    "--cache-gib",
                    fmt::format("{}", a.cache_gib),
                    "--max-batch",
                    std::to_string(r.server.batcher.max_batch),
                    "--max-queue-delay-us",
                    std::to_string(a.max_queue_delay_us),
                    "--max-queue",
                    std::to_string(r.server.batcher.max_queue),
                    "--threads",
                    std::to_string(r.threads)};
  if (r.capacity_rps > 0) {
    f.replica_args.insert(f.replica_args.end(), {"--capacity-rps", fmt::format("{}", r.capacity_rps)});
  }
  if (!r.config_path.empty())
    f.replica_args.insert(f.replica_args.end(), {"--config", r.config_path});
  if (!r.cache_dir.empty())
    f.replica_args.insert(f.replica_args.end(), {"--cache-dir", r.cache_dir});
  f.router.host = r.server.host;
  f.router.port = r.server.port;
  f.autoscaler = a.autoscaler;
  f.autoscaler.min_replicas = lo;
  f.autoscaler.max_replicas = hi;
  f.sync_period = std::chrono::milliseconds(a.sync_period_ms);
  f.decision_log = a.decision_log;
  return serve::run_fleet(f);
}

const CommandRegistration kRegister("", [](CLI::App& parent) {
  auto a = std::make_shared<ServeArgs>();
  auto* cmd = parent.add_subcommand(
      "serve",
      "Serve a checkpoint kiln train wrote over HTTP/JSON with dynamic batching "
      "(docs/serve.md)");
  cmd->add_option("model", a->replica.model_url,
                  "Checkpoint root: s3://BUCKET/PREFIX, file://DIR or DIR (its newest step)");
  cmd->add_option("--host", a->replica.server.host, "Address to listen on")->capture_default_str();
  cmd->add_option("--port", a->replica.server.port, "Port (0: any free one, printed)")
      ->capture_default_str();
  cmd->add_option("--config", a->replica.config_path,
                  "The training config (its [model]); needed for a GPT");
  cmd->add_option("--cache-dir", a->replica.cache_dir,
                  "Node-local weight cache shared by replicas (default KILN_SERVE_CACHE_DIR)");
  cmd->add_option("--cache-gib", a->cache_gib, "Weight cache capacity")->capture_default_str();
  cmd->add_option("--max-batch", a->replica.server.batcher.max_batch, "Requests per forward pass")
      ->capture_default_str();
  cmd->add_option("--max-queue-delay-us", a->max_queue_delay_us,
                  "How long the oldest request may wait for its batch to fill")
      ->capture_default_str();
  cmd->add_option("--max-queue", a->replica.server.batcher.max_queue,
                  "Queued requests beyond which new ones get 503 + Retry-After")
      ->capture_default_str();
  cmd->add_option("--threads", a->replica.threads, "Torch intra-op threads")->capture_default_str();
  cmd->add_option("--capacity-rps", a->replica.capacity_rps,
                  "Serve at most this many requests per second per replica: a batch of n takes "
                  "at least n / R s (a fleet measured on a host smaller than its replicas; "
                  "docs/serve.md)");
  cmd->add_option("--replicas", a->replicas,
                  "MIN:MAX: run a router in front of replica processes, autoscaled on the queue");
  cmd->add_option("--target-queue", a->autoscaler.target,
                  "Fleet: outstanding requests per replica the autoscaler aims at")
      ->capture_default_str();
  cmd->add_option("--sync-period-ms", a->sync_period_ms, "Fleet: how often the autoscaler decides")
      ->capture_default_str();
  cmd->add_option("--scale-down-window-s", a->autoscaler.down_window_s,
                  "Fleet: scale down only to the largest recommendation of this window")
      ->capture_default_str();
  cmd->add_option("--scale-up-window-s", a->autoscaler.up_window_s,
                  "Fleet: scale up only to the smallest recommendation of this window")
      ->capture_default_str();
  cmd->add_option("--rate-period-s", a->autoscaler.up_period_s,
                  "Fleet: the period of the scaling rate limits (up and down)")
      ->capture_default_str();
  cmd->add_option("--tolerance", a->autoscaler.tolerance,
                  "Fleet: no scaling while the queue per replica is this close to the target")
      ->capture_default_str();
  cmd->add_option("--decision-log", a->decision_log,
                  "Fleet: append one JSON line per autoscaling decision and replica event here");
  cmd->callback(run_status([a, cmd]() -> Status {
    if (cmd->got_subcommand("simulate")) return Status::ok();
    if (a->replica.model_url.empty()) {
      return invalid_argument("kiln serve: MODEL (a checkpoint root or URL) is required");
    }
    a->replica.cache_bytes = static_cast<std::uint64_t>(a->cache_gib * (1ull << 30));
    a->replica.server.batcher.max_queue_delay = std::chrono::microseconds(a->max_queue_delay_us);
    if (!a->replicas.empty()) {
      a->autoscaler.down_period_s = a->autoscaler.up_period_s;
      return run_fleet(*a);
    }
    return serve::run_replica(a->replica);
  }));
});

}  // namespace
}  // namespace kiln::cli

namespace kiln::cli {
namespace {

struct SimulateArgs {
  serve::SimOptions sim;
  std::string trace = "all";
  double replicas_peak = 1000;  // the static fleet's size at the trace's peak
  bool json = false;
  std::string svg;
};

nlohmann::json result_json(const serve::SimResult& r, double static_rs) {
  return {{"policy", r.policy},
          {"slo_met_fraction", r.slo_met_fraction},
          {"slo_violations", r.slo_violations},
          {"replica_seconds", r.replica_seconds},
          {"replica_seconds_vs_static", r.replica_seconds / static_rs},
          {"p99_ms", r.p99_s * 1000},
          {"requests", r.requests}};
}

Status simulate(SimulateArgs& a) {
  std::vector<serve::TraceKind> kinds;
  if (a.trace == "all") {
    kinds = {serve::TraceKind::kSteady, serve::TraceKind::kStep, serve::TraceKind::kDiurnal};
  } else {
    KILN_ASSIGN_OR_RETURN(auto k, serve::parse_trace_kind(a.trace));
    kinds = {k};
  }
  // Peak load so that the static fleet at its utilisation is replicas_peak.
  a.sim.trace.peak_rps = a.replicas_peak * a.sim.service.capacity_rps() * a.sim.static_utilisation;
  nlohmann::json out = nlohmann::json::array();
  for (auto kind : kinds) {
    serve::SimOptions o = a.sim;
    o.trace.kind = kind;
    std::vector<serve::SimResult> results;
    for (auto p :
         {serve::PolicyKind::kStaticPeak, serve::PolicyKind::kCpu, serve::PolicyKind::kQueue}) {
      results.push_back(serve::simulate(o, p));
    }
    const double static_rs = results[0].replica_seconds;
    nlohmann::json t = {{"trace", serve::trace_kind_name(kind)},
                        {"peak_rps", o.trace.peak_rps},
                        {"static_peak_replicas", serve::static_peak_replicas(o)},
                        {"slo_ms", o.slo_s * 1000},
                        {"policies", nlohmann::json::array()}};
    for (const auto& r : results) t["policies"].push_back(result_json(r, static_rs));
    out.push_back(t);
    if (!a.json) {
      std::printf(
          "trace %s: peak %.0f req/s, static fleet %d replicas, SLO p99 <= %.0f ms per "
          "%.0f s window\n",
          serve::trace_kind_name(kind).c_str(), o.trace.peak_rps, serve::static_peak_replicas(o),
          o.slo_s * 1000, o.window_s);
      std::printf("  %-12s %10s %12s %16s %10s\n", "policy", "SLO met", "violations",
                  "replica-s (x st)", "p99 ms");
      for (const auto& r : results) {
        std::printf("  %-12s %9.2f%% %12d %9.3g (%.2f) %10.1f\n", r.policy.c_str(),
                    100 * r.slo_met_fraction, r.slo_violations, r.replica_seconds,
                    r.replica_seconds / static_rs, r.p99_s * 1000);
      }
    }
    if (!a.svg.empty()) {
      std::string path = a.svg;
      if (kinds.size() > 1) {
        auto dot = path.rfind(".svg");
        path = (dot == std::string::npos ? path : path.substr(0, dot)) + "-" +
               serve::trace_kind_name(kind) + ".svg";
      }
      std::ofstream f(path, std::ios::trunc);
      f << serve::simulation_svg(o, results);
      f.close();
      if (!f) return errno_status("write " + path, errno);
    }
  }
  if (a.json) std::printf("%s\n", out.dump(2).c_str());
  return Status::ok();
}

const CommandRegistration kRegisterSimulate("serve", [](CLI::App& parent) {
  auto a = std::make_shared<SimulateArgs>();
  auto* cmd = parent.add_subcommand(
      "simulate",
      "Simulate a serving fleet (static, CPU HPA, queue autoscaling) on request traces "
      "(docs/serve.md)");
  auto& s = a->sim;
  cmd->add_option("--trace", a->trace, "steady, step, diurnal or all")->capture_default_str();
  cmd->add_option("--replicas-peak", a->replicas_peak,
                  "Size of the static fleet at the trace's peak (sets the load)")
      ->capture_default_str();
  cmd->add_option("--duration-s", s.trace.duration_s, "Trace length")->capture_default_str();
  cmd->add_option("--seed", s.trace.seed, "Arrival seed")->capture_default_str();
  cmd->add_option("--slo-ms", s.slo_s, "p99 latency SLO per window (ms)")
      ->transform([](std::string v) { return std::to_string(std::stod(v) / 1000); });
  cmd->add_option("--batch-base-ms", s.service.base_s, "Measured batch time: fixed part (ms)")
      ->transform([](std::string v) { return std::to_string(std::stod(v) / 1000); });
  cmd->add_option("--batch-item-ms", s.service.per_item_s, "Measured batch time: per request (ms)")
      ->transform([](std::string v) { return std::to_string(std::stod(v) / 1000); });
  cmd->add_option("--max-batch", s.service.max_batch, "Replica max batch")->capture_default_str();
  cmd->add_option("--cold-start-s", s.service.cold_start_s, "Replica start, weights fetched")
      ->capture_default_str();
  cmd->add_option("--cold-start-cached-s", s.service.cold_start_cached_s,
                  "Replica start, weights in the node cache")
      ->capture_default_str();
  cmd->add_option("--sync-period-s", s.sync_period_s, "Autoscaler period")->capture_default_str();
  cmd->add_option("--scale-down-window-s", s.behavior.down_window_s, "Scale-down stabilization")
      ->capture_default_str();
  cmd->add_option("--scale-down-percent", s.behavior.down_percent,
                  "Scale-down rate limit: at most this % per --scale-down-period-s")
      ->capture_default_str();
  cmd->add_option("--scale-down-period-s", s.behavior.down_period_s, "Scale-down rate period")
      ->capture_default_str();
  cmd->add_option("--scale-up-percent", s.behavior.up_percent,
                  "Scale-up rate limit: at most max(+4, +this %) per 15 s")
      ->capture_default_str();
  cmd->add_option("--target-queue", s.queue_target,
                  "Queue policy: outstanding requests per replica (0: at 85% of capacity)")
      ->capture_default_str();
  cmd->add_flag("--json", a->json, "JSON instead of a table");
  cmd->add_option("--svg", a->svg, "Write load, replicas and p99 over time (one file per trace)");
  cmd->callback(run_status([a]() -> Status { return simulate(*a); }));
});

}  // namespace
}  // namespace kiln::cli
