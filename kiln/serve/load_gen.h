// An open-loop Poisson load generator for `kiln bench serve`: requests are
// scheduled at exponential gaps whatever the server's pace (no coordinated
// omission: a request's latency runs from its scheduled time, so time spent
// waiting for a free connection counts), sent over `clients` keep-alive
// connections from one event loop (Note [One thread for the load] in
// load_gen.cc).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace kiln::serve {

struct LoadOptions {
  int port = 0;
  std::string body;                    // POST /v1/predict body
  std::function<double(double)> rate;  // requests/s at t seconds into the run
  double duration_s = 5;
  int clients = 64;  // concurrent connections
  std::uint64_t seed = 1;
};

struct LoadResult {
  std::vector<double> latencies_s;  // answered 200, in completion order
  std::vector<double> sent_at_s;    // scheduled time of each, same order
  std::uint64_t ok = 0;
  std::uint64_t rejected = 0;             // 503 (overload, Retry-After)
  std::uint64_t dropped = 0;              // no answer, or an answer other than 200/503
  std::vector<std::string> drop_reasons;  // what the first few dropped requests got
  double wall_s = 0;

  double throughput_rps() const { return wall_s > 0 ? ok / wall_s : 0; }
};

// Blocks for the run (plus what is in flight at its end).
LoadResult run_load(const LoadOptions& options);

// Quantile q of `v` (copied and sorted); 0 for an empty vector.
double quantile(std::vector<double> v, double q);

}  // namespace kiln::serve
