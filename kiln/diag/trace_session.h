// TraceSession: what `kiln train` creates per rank to record diagnosis data.
//
// With a directory (--trace-dir DIR) it writes, per rank (docs/diag.md):
//   DIR/rank-<r>/meta.json      rank, world size, host, pid, start time, options
//   DIR/rank-<r>/metrics.jsonl  "step", "eval", "system" and "summary" lines
//   DIR/rank-<r>/trace.json     Chrome trace events (Perfetto, chrome://tracing)
// and rank 0 appends one "cluster" line per summary window to
//   DIR/summaries.jsonl         every rank's summary and the verdict
// `kiln diagnose DIR` reads these. With an empty directory nothing is
// written, but summaries and the live verdict still work.
//
// The trainer's loop:
//   auto session = TraceSession::open(dir, rank, {.world_size = n});
//   ... each step: session->record_step(timer.end_step(loss, samples));
//   if (session->summary_due()) {
//     KILN_ASSIGN_OR_RETURN(Verdict v, session->summarize(&comm, timeout));
//     if (rank == 0) print(verdict_line(v));
//   }
//   session->close();
//
// Threads: record_* and summarize belong to the training thread; the system
// sampler thread (when enabled) writes "system" lines and trace counters
// concurrently, under the session's lock.
#pragma once

#include <chrono>
#include <deque>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>

#include "kiln/base/status.h"
#include "kiln/comm/communicator.h"
#include "kiln/diag/chrome_trace.h"
#include "kiln/diag/metrics_writer.h"
#include "kiln/diag/summary.h"
#include "kiln/diag/system_sampler.h"
#include "kiln/diag/verdict.h"

namespace kiln::diag {

struct TraceOptions {
  int world_size = 1;
  std::int64_t summary_every = 50;  // steps per summary window
  // The trace stops growing after this many steps (metrics.jsonl does not):
  // ~1 kB per step, and Perfetto is sluggish past a few hundred MB.
  std::int64_t trace_max_steps = 20000;
  double sample_interval_s = 1.0;  // system sampling; <= 0 turns it off
  SamplerOptions sampler;          // interval_s is taken from sample_interval_s
  VerdictOptions verdict;
};

class TraceSession {
 public:
  // Creates DIR/rank-<rank>/ (and DIR) and its files; `dir` empty: no files.
  // Errors name the path.
  static Result<std::unique_ptr<TraceSession>> open(const std::string& dir, int rank,
                                                    TraceOptions options = {});
  ~TraceSession();  // close()s, ignoring errors
  TraceSession(const TraceSession&) = delete;
  TraceSession& operator=(const TraceSession&) = delete;

  Status record_step(const StepRecord& r);
  Status record_eval(std::int64_t step, double loss, std::optional<double> accuracy);

  // summary_every steps recorded since the last window closed.
  bool summary_due() const;
  // Closes the window: writes this rank's "summary" line and returns it.
  RankSummary take_summary();
  // take_summary(), then gather_summaries over `comm` (a collective: every
  // rank calls it at the same step; null comm or one rank: no exchange),
  // decide(), and on rank 0 a "cluster" line in DIR/summaries.jsonl. Every
  // rank gets the verdict.
  Result<Verdict> summarize(comm::Communicator* comm, std::chrono::milliseconds timeout);
  // Rank 0's "cluster" line; summarize() calls it.
  Status record_cluster(std::span<const RankSummary> ranks, const Verdict& v);

  // The newest system sample (none before the sampler's first reading or
  // with sampling off).
  std::optional<SystemSample> latest_system() const;
  // Pauses or resumes system sampling (no-op without it).
  void set_sampling(bool on);
  // CPU seconds of the system sampler thread so far (0 without sampling).
  double sampler_cpu_seconds() const;

  // Stops the sampler, closes the trace (writing its "]") and the files.
  Status close();

  const std::string& rank_dir() const { return rank_dir_; }

 private:
  TraceSession(std::string dir, int rank, TraceOptions options);
  void on_system_sample(const SystemSample& s);

  const std::string dir_;
  const int rank_;
  const TraceOptions options_;
  std::string rank_dir_;
  std::unique_ptr<MetricsWriter> metrics_;    // null without a dir
  std::unique_ptr<ChromeTraceWriter> trace_;  // null without a dir or past trace_max_steps
  std::unique_ptr<MetricsWriter> summaries_;  // rank 0 with a dir only
  std::int64_t traced_steps_ = 0;             // training thread only
  // The last windows gathered (training thread only), for the straggler's
  // persistence (Note [A straggler is persistent]).
  std::deque<std::vector<RankSummary>> recent_windows_;
  mutable std::mutex mu_;
  WindowAccumulator window_;                   // GUARDED_BY(mu_)
  std::optional<SystemSample> latest_system_;  // GUARDED_BY(mu_)
  Status sampler_error_;                       // GUARDED_BY(mu_): first write failure
  std::unique_ptr<SystemSampler> sampler_;     // last: stopped first
};

}  // namespace kiln::diag
