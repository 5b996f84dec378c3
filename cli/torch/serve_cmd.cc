// `kiln serve MODEL_URL`: serves a checkpoint `kiln train` wrote over
// HTTP/JSON with dynamic batching (docs/serve.md).
#include <memory>
#include <string>

#include "cli/command.h"
#include "kiln/serve/replica.h"

namespace kiln::cli {
namespace {

struct ServeArgs {
  serve::ReplicaRunOptions replica;
  double cache_gib = 16;
  int max_queue_delay_us = 2000;
};

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
  cmd->callback(run_status([a]() -> Status {
    a->replica.cache_bytes = static_cast<std::uint64_t>(a->cache_gib * (1ull << 30));
    a->replica.server.batcher.max_queue_delay = std::chrono::microseconds(a->max_queue_delay_us);
    return serve::run_replica(a->replica);
  }));
});

}  // namespace
}  // namespace kiln::cli
