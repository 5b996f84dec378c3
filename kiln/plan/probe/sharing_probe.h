// The unit of CPU work of the core-sharing probe (`kiln bench handoff`,
// run by `kiln plan calibrate`): what a rank of a miniature GPT computes
// between two messages, a linear layer forward and backward through
// LibTorch's autograd in fp32 (Note [Core sharing] in kiln/plan/host_profile.h).
#pragma once

#include <memory>

#include "kiln/base/status.h"
#include "kiln/plan/probe/compute_probe.h"

namespace kiln::plan::probe {

// Rows (tokens) of the default unit: four sequences of 128, ~1.4 ms on one
// thread of the CI host. The calibration's sweep uses kSweepUnitRows.
inline constexpr int kDefaultUnitRows = 512;
// One sequence of 128 tokens, ~0.35 ms: fine enough that the sweep's
// smallest work between two meetings (0.5 ms) is not rounded up to a
// 1.4 ms unit (Note [Work between meetings] in kiln/plan/host_profile.h).
inline constexpr int kSweepUnitRows = 128;

class SharingWork {
 public:
  // `rows` tokens through a 128 -> 512 linear layer (the FFN input of
  // examples/train/gpt_3d.toml's block).
  explicit SharingWork(int rows = kDefaultUnitRows);
  ~SharingWork();
  SharingWork(const SharingWork&) = delete;
  SharingWork& operator=(const SharingWork&) = delete;

  // `units` linear layers forward and backward, back to back.
  void run(int units);

 private:
  struct Tensors;
  std::unique_ptr<Tensors> t_;
};

// Seconds per unit of `work` in batches of at least `batch_s`: the median
// of `repeats` batches (Note [Drifting hosts] in kiln/plan/host_profile.h:
// the median, not the fastest, because the host's speed moves and the unit
// must be what the surrounding probes saw). Runs on the calling thread with
// whatever thread pools it has.
double time_units(SharingWork& work, int repeats, double batch_s);

// Seconds of one unit of `rows` on one intra-op thread (both pools set to
// one for the call), the median of the repeats' batches.
Result<double> time_sharing_unit(const ProbeOptions& options, int rows = kDefaultUnitRows);

}  // namespace kiln::plan::probe
