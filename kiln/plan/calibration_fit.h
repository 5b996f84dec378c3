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
  double mean_abs_rel_error = 0;  // of the fit over the samples it kept
  int stalled_samples = 0;        // left out as stalls (Note [Stalled shapes])
};

// Fits t = call + batch·(2MNK/flops + 4(MK+KN+MN)/bytes_per_s). A term whose
// coefficient comes out negative (noise) is dropped and the rest refitted; a
// sample over 3x the fit of the others is a stall and left out, while twice
// as many samples as terms remain (Note [Stalled shapes] in calibration_fit.cc).
// InvalidArgument with fewer samples than terms or no positive FLOP rate.
Result<GemmFit> fit_gemm(const std::vector<GemmSample>& samples);

// The attention core over `batch` (micro-batch × heads) matrices of
// m = n = s rows and k = hd columns: t = call + batch·(4·s²·hd / flops + s²·score).
struct AttentionFit {
  double call_s = 0;
  double flops = 0;
  double score_s = 0;
  double mean_abs_rel_error = 0;
  int stalled_samples = 0;  // as fit_gemm's
};
// Stalls are left out as in fit_gemm. InvalidArgument with fewer than 3
// samples or no positive FLOP rate.
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

// The median of `values` (by copy); 0 for none.
double median_of(std::vector<double> values);

}  // namespace kiln::plan
