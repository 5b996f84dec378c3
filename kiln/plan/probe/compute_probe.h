// Timing this host's compute the way kiln train runs it: LibTorch fp32 on
// the CPU, with a given number of intra-op threads. Used by `kiln plan
// calibrate`; the fits are kiln/plan/calibration_fit.h.
//
// Blocking; sets LibTorch's intra-op thread count (process-wide) for the
// duration of each call, so call it from a process that does nothing else.
#pragma once

#include <vector>

#include "kiln/base/status.h"
#include "kiln/plan/calibration_fit.h"
#include "kiln/plan/host_profile.h"

namespace kiln::plan::probe {

struct ProbeOptions {
  bool quick = false;  // fewer shapes and repeats (tests): seconds, not tens of seconds
  int repeats = 5;     // timed repeats per point; the median counts
};

struct ComputeProbe {
  ComputeRates rates;
  // Mean |relative error| of the linear-layer fits (forward, backward) and
  // of the attention fits over the shapes they were timed at.
  double linear_fit_error = 0;
  double attention_fit_error = 0;
  // Timings the linear and attention fits left out as stalls (Note
  // [Stalled shapes] in kiln/plan/calibration_fit.cc).
  int stalled_shapes = 0;
};

// Every kernel class of a small GPT block (ComputeRates), forward and
// backward through autograd, at the shapes such models use (hidden 128-512,
// seq 128, micro-batches of 1-32 sequences), with `threads` threads.
Result<ComputeProbe> probe_compute(int threads, const ProbeOptions& options);

// Bytes per second of copying a 64 MiB fp32 tensor (read + write) with
// `threads` threads.
Result<double> probe_stream(int threads, const ProbeOptions& options);

// The BLAS LibTorch multiplies with ("OpenBLAS SkylakeX", or LibTorch's own
// configuration line when that cannot be told).
std::string blas_in_use();

}  // namespace kiln::plan::probe
