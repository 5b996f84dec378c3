#include "kiln/plan/search.h"

#include <algorithm>

namespace kiln::plan {

namespace {

std::vector<std::int64_t> divisors(std::int64_t n) {
  std::vector<std::int64_t> out;
  for (std::int64_t d = 1; d <= n; ++d) {
    if (n % d == 0) out.push_back(d);
  }
  return out;
}

}  // namespace

SearchResult search_layouts(const PlanConfig& base, const SearchOptions& opt,
                            const EfficiencyModel& e) {
  SearchResult result;
  const std::int64_t gpus = base.cluster.gpus();
  const auto& m = base.model;
  std::vector<Plan> feasible;
  for (std::int64_t tp : divisors(base.cluster.gpus_per_node)) {
    for (std::int64_t pp : divisors(m.layers)) {
      // DP is whatever is left; a remainder makes the candidate indivisible.
      const std::int64_t dp = std::max<std::int64_t>(1, gpus / (tp * pp));
      for (std::int64_t vpp : opt.vpps) {
        if (vpp > 1 && pp == 1) continue;  // not a distinct layout
        for (std::int64_t mb : opt.micro_batches) {
          for (Recompute rc : {Recompute::kNone, Recompute::kSelective, Recompute::kFull}) {
            for (int zero : opt.zero_stages) {
              if (zero > 0 && dp == 1) continue;  // identical to ZeRO 0
              PlanConfig c = base;
              c.layout.tp = tp;
              c.layout.pp = pp;
              c.layout.dp = dp;
              c.layout.vpp = vpp;
              c.layout.micro_batch = mb;
              c.layout.recompute = rc;
              c.layout.zero = zero;
              c.layout.sequence_parallel = tp > 1;
              c.layout.stage_layers.clear();  // the base file's split is for its own pp
              // A hybrid shard group is for ZeRO-3 and a dp it divides; elsewhere, none.
              if (zero < 3 || dp % std::max<std::int64_t>(1, c.layout.zero3_shard_group) != 0) {
                c.layout.zero3_shard_group = 0;
              }
              ++result.considered;
              // Interleaving also needs the micro-batch count to be a multiple of pp.
              if (!check_layout(c).is_ok() || (vpp > 1 && c.layout.micro_batches() % pp != 0)) {
                ++result.rejected["indivisible"];
                continue;
              }
              auto plan = make_plan(c, e);
              if (!plan.is_ok()) {
                ++result.rejected["indivisible"];
                continue;
              }
              if (!plan->memory.fits || plan->memory.used_fraction > opt.max_memory_fraction) {
                ++result.rejected["out of memory"];
                continue;
              }
              feasible.push_back(std::move(plan).value());
            }
          }
        }
      }
    }
  }
  result.feasible = static_cast<std::int64_t>(feasible.size());
  std::sort(feasible.begin(), feasible.end(), [](const Plan& a, const Plan& b) {
    if (a.tokens_per_s != b.tokens_per_s) return a.tokens_per_s > b.tokens_per_s;
    return a.memory.total < b.memory.total;
  });
  if (static_cast<int>(feasible.size()) > opt.top) feasible.resize(opt.top);
  result.top = std::move(feasible);
  return result;
}

}  // namespace kiln::plan
