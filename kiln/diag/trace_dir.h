// Reading a --trace-dir back (trace_session.h writes it; docs/diag.md has
// the layout) and the offline verdict `kiln diagnose DIR` gives from it.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/diag/step_timer.h"
#include "kiln/diag/summary.h"
#include "kiln/diag/system_sample.h"
#include "kiln/diag/verdict.h"

namespace kiln::diag {

struct RankTrace {
  int rank = 0;
  std::vector<StepRecord> steps;  // in file order (step order)
  std::vector<SystemSample> system;
  std::vector<std::pair<std::int64_t, double>> eval_loss;  // (step, loss)
};

struct TraceDir {
  std::string dir;
  nlohmann::json meta;                   // DIR/meta.json, {} if absent
  std::vector<RankTrace> ranks;          // sorted by rank
  std::vector<nlohmann::json> clusters;  // DIR/summaries.jsonl "cluster" lines
};

// Reads DIR/meta.json, every DIR/rank-<r>/metrics.jsonl and DIR/summaries.jsonl.
// A truncated last line (a crashed run) is skipped; any other malformed line
// is DataLoss naming the file and line. NotFound if DIR has no rank-*/metrics.jsonl.
Result<TraceDir> read_trace_dir(const std::string& dir);

// One summary per rank over the steps numbered >= skip (warm-up: the first
// steps pay for allocation, loader start-up and bucket rebuilds) and the
// system samples taken since the first of them.
std::vector<RankSummary> summarize_trace(const TraceDir& t, std::int64_t skip);

// The same steps cut into consecutive windows of `window_steps` step numbers
// (the first from `skip`): result[w][i] is rank i's summary of window w.
// Steps only: a window's system readings are left unknown.
std::vector<std::vector<RankSummary>> summarize_windows(const TraceDir& t, std::int64_t skip,
                                                        std::int64_t window_steps);

// summarize_trace + decide, with the run cut into windows of max(5, steps/8)
// steps for the straggler's persistence (Note [A straggler is persistent]). FailedPrecondition if no rank has a step >= skip.
Result<Verdict> diagnose(const TraceDir& t, std::int64_t skip, const VerdictOptions& options = {});

}  // namespace kiln::diag
