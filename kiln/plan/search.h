// `kiln plan --search`: enumerate layouts for a model on a cluster and rank
// the feasible ones by predicted tokens/s.
//
// Space: TP a divisor of the GPUs per node (and of heads, kv heads, FFN); PP
// dividing the layers; DP the rest (must divide the GPU count and, with the
// micro-batch, the global batch); micro-batch 1..8; recompute none /
// selective / full; ZeRO 0..3; virtual stages 1, 2, 4 when PP > 1. Sequence
// parallelism is on whenever TP > 1 (it never loses). Global batch, model and
// cluster stay as configured.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "kiln/plan/plan.h"

namespace kiln::plan {

struct SearchOptions {
  int top = 10;
  std::vector<std::int64_t> micro_batches = {1, 2, 4, 8};
  std::vector<int> zero_stages = {0, 1, 2, 3};
  std::vector<std::int64_t> vpps = {1, 2, 4};
  // A layout must leave this much of HBM free to be listed: allocator
  // fragmentation and spikes eat the rest (design §7: above 95% is a memory
  // bottleneck).
  double max_memory_fraction = 0.95;
};

struct SearchResult {
  std::vector<Plan> top;  // best first, all within max_memory_fraction
  std::int64_t considered = 0;
  std::int64_t feasible = 0;
  std::map<std::string, std::int64_t> rejected;  // reason -> count: "out of memory", "indivisible"
};

SearchResult search_layouts(const PlanConfig& base, const SearchOptions& options = {},
                            const EfficiencyModel& e = EfficiencyModel::defaults());

}  // namespace kiln::plan
