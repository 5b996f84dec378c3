// Fault injection for diagnosis (`kiln train --inject SPEC`, docs/diag.md):
// a debugging tool that makes one resource the bottleneck on purpose, so the
// verdict can be checked against a known answer (tests/diag) and a user can
// see what each bottleneck looks like in a trace.
//
//   data-delay=MS     sleep MS before each micro-batch is handed over (data wait)
//   comm-delay=MS     sleep MS inside the gradient sync's exposed wait
//   compute-spin=MS   burn MS of CPU in each micro-batch's forward
//   ckpt-sync         a blocking checkpoint after every step
//   eval-delay=MS     sleep MS in each evaluation (one slower than kiln run's
//                     --hang-timeout, for its tests)
// each optionally followed by @RANK (only that rank; default every rank).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "kiln/base/status.h"

namespace kiln::diag {

enum class InjectKind { kDataDelay, kCommDelay, kComputeSpin, kCheckpointSync, kEvalDelay };

struct Injection {
  InjectKind kind = InjectKind::kDataDelay;
  double ms = 0;  // unused for ckpt-sync
  int rank = -1;  // -1: every rank

  bool applies_to(int r) const { return rank < 0 || rank == r; }
};

// Parses one SPEC; InvalidArgument naming the spec and what is wrong.
Result<Injection> parse_injection(std::string_view spec);

// The spec again, e.g. "compute-spin=20@1" (meta.json records them so).
std::string injection_to_string(const Injection& i);

// What one rank injects, folded from every --inject (repeats add up).
struct RankInjections {
  double data_delay_ms = 0;
  double comm_delay_ms = 0;
  double compute_spin_ms = 0;
  bool ckpt_sync = false;
  double eval_delay_ms = 0;

  bool any() const {
    return data_delay_ms > 0 || comm_delay_ms > 0 || compute_spin_ms > 0 || ckpt_sync ||
           eval_delay_ms > 0;
  }
};
RankInjections injections_for_rank(const std::vector<Injection>& all, int rank);

// Sleeps `ms` (a wait: the CPU is free). No-op for ms <= 0.
void inject_sleep(double ms);
// Keeps this thread busy for `ms` of wall time (compute: the CPU is taken).
void inject_spin(double ms);

}  // namespace kiln::diag
