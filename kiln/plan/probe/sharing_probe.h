// The unit of CPU work of the core-sharing probe (`kiln bench handoff`,
// run by `kiln plan calibrate`): what a rank of a miniature GPT computes
// between two messages, a linear layer forward and backward through
// LibTorch's autograd in fp32 (Note [Core sharing] in kiln/plan/host_profile.h).
#pragma once

#include <memory>

#include "kiln/base/status.h"
#include "kiln/plan/probe/compute_probe.h"

namespace kiln::plan::probe {

class SharingWork {
 public:
  SharingWork();
  ~SharingWork();
  SharingWork(const SharingWork&) = delete;
  SharingWork& operator=(const SharingWork&) = delete;

  // `units` linear layers forward and backward, back to back.
  void run(int units);

 private:
  struct Tensors;
  std::unique_ptr<Tensors> t_;
};

// Seconds of one unit on one intra-op thread of an otherwise idle host (the
// fastest of the repeats' batches, Note [Timing small kernels]: on a shared
// machine noise only ever adds time).
Result<double> time_sharing_unit(const ProbeOptions& options);

}  // namespace kiln::plan::probe
