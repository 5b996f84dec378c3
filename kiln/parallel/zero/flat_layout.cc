#include "kiln/parallel/zero/flat_layout.h"

#include <algorithm>

#include "kiln/base/check.h"
#include "kiln/ckpt/state.h"

namespace kiln::parallel::zero {

FlatLayout::FlatLayout(std::vector<std::int64_t> numels, int world)
    : numels_(std::move(numels)), world_(world) {
  KILN_CHECK(world_ >= 1);
  offsets_.reserve(numels_.size());
  for (std::int64_t n : numels_) {
    KILN_CHECK(n >= 0);
    offsets_.push_back(total_);
    total_ += n;
  }
}

FlatRange FlatLayout::shard(int rank) const {
  ckpt::RowRange r = ckpt::even_rows(total_, rank, world_);
  return {r.offset, r.count};
}

std::int64_t FlatLayout::block() const { return (total_ + world_ - 1) / world_; }

std::vector<std::size_t> FlatLayout::shard_counts() const {
  std::vector<std::size_t> counts;
  for (int r = 0; r < world_; ++r) counts.push_back(static_cast<std::size_t>(shard(r).count));
  return counts;
}

std::vector<FlatLayout::Segment> FlatLayout::padded_segments(std::size_t param) const {
  std::vector<Segment> out;
  std::int64_t lo = offsets_[param], hi = lo + numels_[param];
  for (int r = 0; r < world_ && lo < hi; ++r) {
    FlatRange s = shard(r);
    std::int64_t a = std::max(lo, s.offset), b = std::min(hi, s.offset + s.count);
    if (a >= b) continue;
    out.push_back({a - offsets_[param], r * block() + (a - s.offset), b - a});
  }
  return out;
}

}  // namespace kiln::parallel::zero
