#include "kiln/diag/overhead_ab.h"

#include <algorithm>

namespace kiln::diag {

void OverheadAB::add(std::int64_t n, double seconds) {
  if (block_ <= 0 || n < 0) return;
  const auto b = static_cast<std::size_t>(n / block_);
  if (block_s_.size() <= b) {
    block_s_.resize(b + 1, 0.0);
    block_n_.resize(b + 1, 0);
  }
  block_s_[b] += seconds;
  ++block_n_[b];
}

OverheadAB::Result OverheadAB::result() const {
  Result r;
  std::vector<double> ratios;
  double rec_s = 0, unrec_s = 0;
  std::int64_t rec_n = 0, unrec_n = 0;
  // Pair p is blocks 2p (recorded) and 2p+1 (not); pair 0 is warm-up.
  for (std::size_t p = 1; 2 * p + 1 < block_s_.size(); ++p) {
    const std::size_t on = 2 * p, off = 2 * p + 1;
    if (block_n_[on] != block_ || block_n_[off] != block_) continue;  // incomplete
    rec_s += block_s_[on];
    unrec_s += block_s_[off];
    rec_n += block_n_[on];
    unrec_n += block_n_[off];
    ratios.push_back(block_s_[on] / std::max(block_s_[off], 1e-12));
  }
  if (ratios.empty()) return r;
  std::sort(ratios.begin(), ratios.end());
  const std::size_t m = ratios.size() / 2;
  r.ratio = ratios.size() % 2 == 1 ? ratios[m] : (ratios[m - 1] + ratios[m]) / 2;
  r.recorded_s = rec_s / static_cast<double>(rec_n);
  r.unrecorded_s = unrec_s / static_cast<double>(unrec_n);
  r.pairs = static_cast<int>(ratios.size());
  return r;
}

}  // namespace kiln::diag
