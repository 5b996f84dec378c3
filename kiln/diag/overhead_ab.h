// OverheadAB: what diagnosis costs, measured inside one training process.
//
// Note [Diagnosis overhead, A/B in one process]: two separate runs (one with
// diagnosis, one without) differ by ±15% on a shared VM whatever they do,
// so they cannot show a 1% cost. Within one run, diagnosis records only
// every other block of `block_steps` steps (system sampling paused in
// between), and each recorded block is compared with the unrecorded block
// right after it: drift slower than a block cancels, and many block pairs
// average the rest. What it cannot see is the cost of threads merely
// existing (the idle /metrics server): they run in both kinds of block.
// Enabled by KILN_DIAG_AB_STEPS (bench/diag_overhead.sh --ab); pure
// bookkeeping, no clock of its own.
#pragma once

#include <cstdint>
#include <vector>

namespace kiln::diag {

class OverheadAB {
 public:
  // block_steps <= 0: disabled, every step is recorded.
  explicit OverheadAB(std::int64_t block_steps) : block_(block_steps) {}

  bool enabled() const { return block_ > 0; }
  // Whether diagnosis records step `n` (counted from the run's first step).
  bool recorded(std::int64_t n) const { return block_ <= 0 || (n / block_) % 2 == 0; }
  // Step n's wall time, from one step's start to the next's.
  void add(std::int64_t n, double seconds);

  struct Result {
    double recorded_s = 0;    // mean seconds per step in recorded blocks
    double unrecorded_s = 0;  // ... in unrecorded blocks
    double ratio = 0;         // median over block pairs of recorded / unrecorded
    int pairs = 0;            // complete block pairs after the first (warm-up)
  };
  // Over the complete block pairs after the first.
  Result result() const;

 private:
  std::int64_t block_;
  std::vector<double> block_s_;      // per block: seconds of its steps
  std::vector<std::int64_t> block_n_;  // per block: steps added
};

}  // namespace kiln::diag
