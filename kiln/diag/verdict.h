// The bottleneck verdict: a pure function of one RankSummary per rank that
// names the resource the step waits on, with evidence in numbers and the
// next thing to try (docs/diag.md gives the rules and thresholds).
//
// Order of the rules (first match wins):
//   memory      host MemAvailable < 5% of MemTotal, or accelerator memory > 95%
//   straggler   one rank's own time (step less exposed comm) >= 1.3x the median
//               of the others' and >= 10% of the median step longer
//   checkpoint  checkpoint stall >= 10% of the step (mean over ranks)
//   data        data wait >= 10% of the step
//   comm        exposed comm >= 15% of the step
//   compute     otherwise
// When several of checkpoint/data/comm pass, the largest fraction wins. A
// straggler whose extra time is checkpoint stall, while checkpoints stall
// every rank past the threshold, is reported as checkpoint: rank 0 writes
// the manifest and is expected to stall longer.
//
// Beside it, the design's rule of thumb from utilisation counters alone
// (docs/diag.md), for comparison.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <vector>

#include "kiln/diag/summary.h"

namespace kiln::diag {

struct VerdictOptions {
  double memory_available_min = 0.05;
  double gpu_memory_max = 0.95;
  double straggler_ratio = 1.3;
  double straggler_min_excess = 0.10;  // of the median step time
  double checkpoint_fraction = 0.10;
  double data_fraction = 0.10;
  double comm_fraction = 0.15;
};

struct RuleOfThumb {
  std::string verdict;  // "storage", "network", "cpu", "memory", "compute"
  std::string reason;   // the counters it read, in numbers
};

struct Verdict {
  std::string verdict;  // "data", "comm", "compute", "checkpoint", "memory", "straggler"
  std::vector<std::string> evidence;
  std::string next;  // the next thing to try
  int rank = -1;     // the straggler, or the rank the memory evidence is from
  int world_size = 0;
  std::int64_t steps = 0;                         // steps summarised (all ranks)
  std::map<std::string, double> phase_fractions;  // phase -> mean fraction of step time
  double step_s = 0;                              // mean over ranks
  RuleOfThumb rule;
};

// Ranks with no steps are ignored; with none left the verdict is "unknown".
Verdict decide(std::span<const RankSummary> ranks, const VerdictOptions& options = {});

RuleOfThumb rule_of_thumb(std::span<const RankSummary> ranks);

// {"verdict":..,"evidence":[..],"next":..,"rank":..,"phase_fractions":{..},
//  "rule_of_thumb":{"verdict":..,"reason":..},...}; "rank" only for a straggler
// (and memory, where it names the rank short of memory).
nlohmann::json verdict_to_json(const Verdict& v);

// One line for the training log: "bottleneck: data (data wait is 31% ...) | rule of thumb: cpu".
std::string verdict_line(const Verdict& v);

}  // namespace kiln::diag
