// The pipeline schedule of one training step played out on a host whose
// cores the ranks share: 1F1B (PipeDream-Flush) and its interleaved form
// (Narayanan et al. 2021 §2.2), with processor sharing.
//
// Why simulate instead of using the formula: on a GPU each stage owns its
// device, so a stage waiting in the fill or drain is pure loss, the bubble
// (p − 1)/(v·m) of the ideal time. On a CPU host whose ranks outnumber its
// cores (8 ranks on 2 cores), a waiting rank gives its core to a working
// one: the bubble shrinks, and the step approaches the host's total work
// divided by its cores. Between the two regimes the answer depends on how
// many ranks are runnable at each moment, which is what this plays out.
//
// Model: device d (one pipeline rank position; every TP and DP member of its
// stage does the same work at the same time, `ranks_per_device` of them)
// runs its operations in schedule order. An operation may start once its
// input has arrived (the previous virtual stage's forward, the next one's
// backward, plus `p2p_latency_s`). All running operations share the host
// fairly: with A devices running, each rank proceeds at
// min(1, cores / (A · ranks_per_device · threads_per_rank)) of its
// unshared speed, divided by the sharing slowdown at that many runnable
// ranks per core (Note [Slowdown at the moment's sharing]); an operation's
// wait (hand-offs) then passes in wall time without a core. Deterministic; exact for the 1F1B formula when nothing is
// shared (a unit test checks (m + p − 1)(f + b)).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "kiln/base/status.h"

namespace kiln::plan {

struct PipelineSimInput {
  int stages = 1;        // p: devices in the pipeline
  int chunks = 1;        // v: model chunks (virtual stages) per device; > 1 = interleaved
  int micro_batches = 1; // m
  // Seconds at full (unshared) speed, per device and chunk: [device][chunk].
  std::vector<std::vector<double>> forward_s;
  std::vector<std::vector<double>> backward_s;
  // Work after a device's last backward (its DP gradient reduction), at full speed.
  std::vector<double> tail_s;
  // Wall time of each operation (and tail) during which its ranks hold no
  // core: the hand-offs of the blocking messages inside it on an
  // oversubscribed host (Note [Core sharing] in host_profile.h). It follows
  // the operation's compute; empty tables mean none.
  std::vector<std::vector<double>> forward_wait_s;
  std::vector<std::vector<double>> backward_wait_s;
  std::vector<double> tail_wait_s;
  double p2p_latency_s = 0;  // from a send's completion to the receiver being able to start
  int ranks_per_device = 1;  // tp · dp: ranks doing this device's work in lockstep
  int threads_per_rank = 1;
  int cores = 1;
  // Note [Slowdown at the moment's sharing]: the durations above carry the
  // steady state's sharing slowdown (every rank of the host runnable); this
  // gives the slowdown at k runnable ranks per core relative to it, applied
  // to the work running while k are (empty: 1 at every k).
  std::function<double(double ranks_per_core)> relative_slowdown;
};

struct PipelineSimResult {
  double makespan_s = 0;               // first forward to the last device's tail
  std::vector<double> busy_s;          // per device: wall time with an operation running
  std::vector<double> finish_s;        // per device: when its last operation ended
  double full_speed_fraction = 0;      // share of the makespan with no core contention
};

// Operation order of one device: (micro-batch, chunk, forward?) in the order
// Megatron-LM issues them (1F1B: p − d − 1 warm-up forwards, then one
// forward one backward, then the cool-down; interleaved: chunks in groups
// of p micro-batches, (p − d − 1)·2 + (v − 1)·p warm-up forwards).
struct PipelineOp {
  int micro_batch = 0;
  int chunk = 0;
  bool forward = true;
};
std::vector<PipelineOp> schedule_for_device(int device, int stages, int chunks, int micro_batches);

// InvalidArgument for inconsistent input (sizes, non-positive counts, the
// interleaved schedule with m not a multiple of p).
Result<PipelineSimResult> simulate_pipeline(const PipelineSimInput& in);

}  // namespace kiln::plan
