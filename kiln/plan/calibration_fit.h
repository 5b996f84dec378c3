// Turning `kiln plan calibrate`'s timings into the constants of a host
// profile (host_profile.h): small linear least-squares fits in relative
// error, so that a 10 µs point weighs as much as a 10 ms one.
//
// Pure functions, no clocks: the probes that time things live in
// kiln/plan/probe/ (LibTorch) and cli/ (kiln::comm), and the unit tests feed
// these fits synthetic timings with known constants.
#pragma once

#include <cstddef>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/plan/host_profile.h"

namespace kiln::plan {

// One timed matrix product: `batch` products of M×K by K×N (fp32).
struct GemmSample {
  double m = 0, n = 0, k = 0, batch = 1;
  double seconds = 0;
};

struct GemmFit {
  double call_s = 0;          // per call
  double flops = 0;           // sustained FLOP/s
  double bytes_per_s = 0;     // operand traffic (0: no separable traffic term)
  double mean_abs_rel_error = 0;  // of the fit over its samples
};

// Fits t = call + batch·(2MNK/flops + 4(MK+KN+MN)/bytes_per_s). A term whose
// coefficient comes out negative (noise) is dropped and the rest refitted.
// InvalidArgument with fewer samples than terms or no positive FLOP rate.
Result<GemmFit> fit_gemm(const std::vector<GemmSample>& samples);

// The attention core over `batch` (micro-batch × heads) matrices of
// m = n = s rows and k = hd columns: t = call + batch·(4·s²·hd / flops + s²·score).
struct AttentionFit {
  double call_s = 0;
  double flops = 0;
  double score_s = 0;
  double mean_abs_rel_error = 0;
};
// InvalidArgument with fewer than 3 samples or no positive FLOP rate.
Result<AttentionFit> fit_attention(const std::vector<GemmSample>& samples);

// One timed transfer of `bytes` (an op's payload, a collective's buffer).
struct SizeSample {
  double bytes = 0;
  double seconds = 0;
};

struct LinearFit {
  double fixed_s = 0;      // the size-independent part (≥ 0)
  double bytes_per_s = 0;  // 1 / slope
  double mean_abs_rel_error = 0;
  bool plain_rate = false;  // Note [Noisy fits]: no fit, the largest size's rate
};

// Fits t = fixed + bytes / bytes_per_s. InvalidArgument with fewer than two
// distinct sizes or a non-increasing time.
Result<LinearFit> fit_linear(const std::vector<SizeSample>& samples);

// fit_linear, or where noise (a loaded host) left the timings no slope, the
// largest size's plain rate with no fixed part and a fit error of 100%
// (plain_rate set; Note [Noisy fits] in kiln/plan/probe/compute_probe.cc).
// Fails only where no sample has a positive time at its largest size.
Result<LinearFit> fit_linear_or_plain_rate(const std::vector<SizeSample>& samples);

// One timing of `kiln bench handoff`: ranks_per_core ranks per core, each
// round `work_s` of compute (as one rank alone measures it) and a blocking
// pair all-reduce, `round_s` per round.
struct SharingSample {
  double ranks_per_core = 1;
  double work_s = 0;
  double round_s = 0;
};

// Per ranks-per-core value, fits round = slowdown · max(1, ranks_per_core) ·
// work + handoff by least squares over its work sizes (Note [Core sharing]
// in host_profile.h). A negative handoff (noise) is dropped and the slowdown
// refitted alone; timings that do not grow with the work at all (a loaded
// machine) give the largest work's round over its work and no handoff.
// Each point also carries, per distinct work size, the median of
// (round − handoff) / (max(1, ranks_per_core) · work) over that size's
// timings (Note [Work between meetings]: `by_work`).
// Ascending in ranks per core. InvalidArgument for a value with fewer than
// two distinct work sizes.
Result<std::vector<CoreSharingPoint>> fit_core_sharing(const std::vector<SharingSample>& samples);

// One timing of the pipeline-shaped probe (`kiln bench handoff --pp`, Note
// [Pipeline hand-off] in host_profile.h): `stages` stages of `group` ranks on
// `cores` cores, 1F1B over `microbatches`; every forward `messages` times a
// piece of work then a group all-reduce, the backward the same with its own
// work. Work and transfers are one rank's on an idle host.
struct PipelineSharingSample {
  int cores = 1;
  int stages = 2;
  int group = 2;
  int microbatches = 1;
  int messages = 1;
  double forward_work_s = 0;   // one forward's work, all its pieces
  double backward_work_s = 0;
  double message_s = 0;        // one group all-reduce's transfer
  double p2p_s = 0;            // one activation (or gradient) to the neighbour stage
  double p2p_alpha_s = 0;      // the link's per-message latency
  double step_s = 0;           // measured
  double ranks_per_core() const { return static_cast<double>(stages) * group / cores; }
};

// The host model's step for the probe (composed as host_step_time.cc
// composes a stage: compute and transfers slowed by `slowdown`, each group
// all-reduce waiting `group_handoff_s` per exchange round, each pipeline
// receive `p2p_handoff_s` after the link's latency, played out by
// pipeline_sim.h).
Result<double> pipeline_probe_step_s(const PipelineSharingSample& sample, double slowdown,
                                     double p2p_handoff_s, double group_handoff_s);

// The host model's step for the probe with no group hand-off at all: the
// slowdown and lockstep hand-off `sharing` gives at the sample's ranks per
// core, as fit_pipeline_sample_handoff starts from. A measured step below it
// is one the profile's [core_sharing] already over-prices: the fit then
// gives 0, a bound rather than a measured wait (calibrate prints both).
Result<double> pipeline_probe_lockstep_step_s(const PipelineSharingSample& sample,
                                              const std::vector<CoreSharingPoint>& sharing);

// The group hand-off with which pipeline_probe_step_s reproduces one
// measured step, at the slowdown and lockstep hand-off `sharing` gives at
// the sample's ranks per core (0 when the model is slower even without).
Result<double> fit_pipeline_sample_handoff(const PipelineSharingSample& sample,
                                           const std::vector<CoreSharingPoint>& sharing);

// Per ranks-per-core value, the group hand-off with which
// pipeline_probe_step_s reproduces the measured steps (found by bisection
// per sample; the median over the value's samples), given the lockstep
// slowdown and hand-off of `sharing` (fit_core_sharing). A probe already
// slower in the model at no hand-off gives 0. Ascending. InvalidArgument
// for a malformed sample.
Result<std::vector<PipelineHandoffPoint>> fit_pipeline_handoff(
    const std::vector<PipelineSharingSample>& samples,
    const std::vector<CoreSharingPoint>& sharing);

// The case a round of repeated measurements visits `i`-th: round `round`
// starts `round` cases later (mod `cases`), so a drift of the host during
// the rounds spreads over every case (Note [Drifting hosts]). 0 for no cases.
std::size_t rotated_index(std::size_t i, int round, std::size_t cases);

// The median of `values` (by copy); 0 for none.
double median_of(std::vector<double> values);

}  // namespace kiln::plan
