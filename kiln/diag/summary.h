// RankSummary: what one rank did over a window of steps, in a fixed-size
// layout so ranks can allgather it over kiln::comm (aggregate.h). The verdict
// (verdict.h) is a pure function of one summary per rank.
#pragma once

#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <type_traits>
#include <vector>

#include "kiln/diag/step_timer.h"
#include "kiln/diag/system_sample.h"

namespace kiln::diag {

struct RankSummary {
  std::int64_t rank = 0;
  std::int64_t steps = 0;  // 0: nothing recorded in the window
  std::int64_t first_step = 0;
  std::int64_t last_step = 0;
  double step_s_mean = 0;
  double step_s_median = 0;
  double step_s_max = 0;
  std::array<double, kPhaseCount> phase_s_mean{};  // exclusive seconds per step
  double samples_per_s = 0;
  double comm_bytes_per_step = 0;
  double comm_s_per_step = 0;  // 0: unknown
  // The collectives of a step's gradient sync, one record each: how many per
  // step, the largest one's bytes, and their bytes over the seconds they ran
  // (bytes-weighted bandwidth, as algbw); 0 where unknown.
  double collectives_per_step = 0;
  double collective_bytes_max = 0;
  double collective_Bps = 0;
  // Step-to-step standard deviation of own time (step less exposed comm):
  // the run's own noise, which a straggler's excess must stand above.
  double own_s_stddev = 0;
  double cache_hit_rate = -1;  // mean over steps that knew it; -1 unknown
  double loss_last = 0;
  // System readings averaged over the window; -1 where unknown.
  std::int64_t system_samples = 0;
  double cpu_cores = -1;
  double cpu_count = -1;
  double rss_bytes = -1;
  double mem_available_bytes = -1;
  double mem_total_bytes = -1;
  double disk_read_Bps = -1;
  double disk_write_Bps = -1;
  double disk_util = -1;
  double net_rx_Bps = -1;
  double net_tx_Bps = -1;
  double net_util = -1;
  double gpu_util = -1;      // mean over GPUs and samples
  double gpu_mem_frac = -1;  // highest used/total seen

  double phase(Phase p) const { return phase_s_mean[static_cast<int>(p)]; }
  double fraction(Phase p) const { return step_s_mean > 0 ? phase(p) / step_s_mean : 0; }
  // Time this rank spent on its own work: the step less waiting for peers.
  double own_s() const { return step_s_mean - phase(Phase::kExposedComm); }
  double comm_Bps() const {
    return comm_s_per_step > 0 ? comm_bytes_per_step / comm_s_per_step : 0;
  }
};
static_assert(std::is_trivially_copyable_v<RankSummary>);

// Builds a RankSummary from the steps and system samples of one window.
// Not thread-safe; the owner (TraceSession) locks around it.
class WindowAccumulator {
 public:
  explicit WindowAccumulator(int rank) : rank_(rank) {}
  void add_step(const StepRecord& r);
  void add_system(const SystemSample& s);
  std::int64_t steps() const { return static_cast<std::int64_t>(step_s_.size()); }
  // The summary of everything added since the last reset.
  RankSummary summary() const;
  void reset();

 private:
  int rank_;
  std::vector<double> step_s_;
  std::vector<double> own_s_;  // step less exposed comm, per step
  double collectives_ = 0, collective_bytes_ = 0, collective_s_ = 0;
  RankSummary sums_{};  // running sums of per-step fields
  std::int64_t cache_known_ = 0;
  std::int64_t comm_known_ = 0;
  double samples_ = 0;
  double step_s_sum_ = 0;
  // System sums and counts (a field may be unknown in some samples).
  std::array<double, 12> sys_sum_{};
  std::array<std::int64_t, 12> sys_n_{};
  double gpu_mem_frac_max_ = -1;
  std::int64_t system_samples_ = 0;
};

nlohmann::json summary_to_json(const RankSummary& s);
RankSummary summary_from_json(const nlohmann::json& j);

}  // namespace kiln::diag
