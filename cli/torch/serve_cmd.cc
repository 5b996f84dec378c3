// `kiln serve MODEL_URL`: serves a checkpoint `kiln train` wrote over
// HTTP/JSON with dynamic batching (docs/serve.md).
#include <memory>
#include <string>

#include <fmt/format.h>

#include "cli/command.h"
#include "kiln/serve/fleet.h"
#include "kiln/serve/replica.h"

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
    return invalid_argument(fmt::format("--replicas {}: expected MIN:MAX with 1 <= MIN <= MAX",
                                        a.replicas));
  }
  serve::FleetOptions f;
  f.exe = "/proc/self/exe";
  const auto& r = a.replica;
  f.replica_args = {r.model_url, "--cache-gib", fmt::format("{}", a.cache_gib), "--max-batch",
                    std::to_string(r.server.batcher.max_batch), "--max-queue-delay-us",
                    std::to_string(a.max_queue_delay_us), "--max-queue",
                    std::to_string(r.server.batcher.max_queue), "--threads",
                    std::to_string(r.threads)};
  if (!r.config_path.empty()) f.replica_args.insert(f.replica_args.end(), {"--config", r.config_path});
  if (!r.cache_dir.empty()) f.replica_args.insert(f.replica_args.end(), {"--cache-dir", r.cache_dir});
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
      "serve", "Serve a checkpoint kiln train wrote over HTTP/JSON with dynamic batching "
               "(docs/serve.md)");
  cmd->add_option("model", a->replica.model_url,
                  "Checkpoint root: s3://BUCKET/PREFIX, file://DIR or DIR (its newest step)")
      ->required();
  cmd->add_option("--host", a->replica.server.host, "Address to listen on")
      ->capture_default_str();
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
  cmd->callback(run_status([a]() -> Status {
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
