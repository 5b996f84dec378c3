// The bottleneck verdict: a pure function of one RankSummary per rank that
// names the resource the step waits on, with evidence in numbers and the
// next thing to try (docs/diag.md gives the rules and thresholds).
//
// memory comes first: a host or accelerator out of memory. Otherwise every
// cause past its threshold is a candidate, and they are ranked by how much
// of the step removing each would save (Note [Ranking causes by the time
// they cost]); the first is the verdict, the ranking comes with it:
//   straggler   one rank's own time (step less exposed comm) >= 1.3x the median
//               of the others' and >= 10% of the median step longer, by more
//               than the run's step-to-step noise of own time, and the
//               slowest rank in >= 75% of the windows (Note [A straggler is
//               persistent]); saves its excess (the others wait that long)
//   checkpoint  checkpoint stall >= 10% of the step (mean over ranks); saves it
//   data        data wait >= 10% of the step (mean over ranks); saves it
//   comm        exposed comm >= 15% of the step on every rank (the least any
//               rank waits: the rest is waiting for a slower rank); saves it
//   compute     when no candidate passes
// A straggler whose extra time is checkpoint stall, while checkpoints stall
// every rank past the threshold, is not a candidate: rank 0 writes the
// manifest and is expected to stall longer.
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
  double straggler_persistence = 0.75;  // of the windows in which it is the slowest
  double straggler_noise_margin = 1.0;  // x the median rank's own_s_stddev
};

// One cause past its threshold and the fraction of the step removing it
// would save.
struct Candidate {
  std::string verdict;
  double saves = 0;
  int rank = -1;  // the straggler
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
  std::vector<Candidate> ranking;                 // most saved first; empty: compute
  RuleOfThumb rule;
};

// `ranks`: one summary per rank of the run (or the window) to judge. Ranks
// with no steps are ignored; with none left the verdict is "unknown".
// `windows`: the same steps cut into consecutive windows, windows[w] one
// summary per rank, for the straggler's persistence; empty: the whole run
// counts as one window (a straggler then needs only the noise margin).
Verdict decide(std::span<const RankSummary> ranks, const VerdictOptions& options = {},
               std::span<const std::vector<RankSummary>> windows = {});

RuleOfThumb rule_of_thumb(std::span<const RankSummary> ranks);

// {"verdict":..,"evidence":[..],"next":..,"rank":..,"phase_fractions":{..},
//  "ranking":[{"verdict":..,"saves":..,"rank":..},..],
//  "rule_of_thumb":{"verdict":..,"reason":..},...}; "rank" only for a straggler
// (and memory, where it names the rank short of memory).
nlohmann::json verdict_to_json(const Verdict& v);

// One line for the training log: "bottleneck: data (data wait is 31% ...) | rule of thumb: cpu".
std::string verdict_line(const Verdict& v);

}  // namespace kiln::diag
