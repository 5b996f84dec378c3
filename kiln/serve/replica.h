// One `kiln serve MODEL_URL` replica process: HTTP up at once, weights
// through the tiers (object store -> node cache -> memory), ready, and on
// SIGTERM or SIGINT a graceful drain and exit 0.
#pragma once

#include <cstdint>
#include <string>

#include "kiln/base/status.h"
#include "kiln/serve/server.h"

namespace kiln::serve {

struct ReplicaRunOptions {
  std::string model_url;    // s3://BUCKET/PREFIX, file://DIR or DIR: a checkpoint root
  std::string config_path;  // the training TOML (needed for a GPT)
  std::string cache_dir;    // the node-local weight cache ("" = KILN_SERVE_CACHE_DIR)
  std::uint64_t cache_bytes = 16ull << 30;
  int threads = 1;  // torch intra-op threads
  // > 0: the replica serves at most this many requests per second (Note [A
  // replica's capacity, enforced], capped_model.h).
  double capacity_rps = 0;
  ReplicaOptions server;
};

// The weight cache directory when none is given.
std::string default_cache_dir();

// Serves until SIGTERM or SIGINT, then drains (every accepted request is
// answered) and returns OK. Prints "listening on HOST:PORT" once bound and
// "ready ..." once the weights are loaded, one line each, flushed. Call from
// the main thread before any other thread exists: it blocks the signals
// process-wide so that only its sigwait sees them.
Status run_replica(const ReplicaRunOptions& options);

}  // namespace kiln::serve
