#include "kiln/parallel/zero/flat_layout.h"

#include <gtest/gtest.h>

#include <numeric>

namespace kiln::parallel::zero {
namespace {

TEST(FlatLayout, SharesAreTheEvenSplitAndCoverEveryElementOnce) {
  for (int world : {1, 2, 3, 4, 7}) {
    FlatLayout l({5, 0, 13, 1}, world);
    EXPECT_EQ(l.total(), 19);
    std::int64_t next = 0;
    for (int r = 0; r < world; ++r) {
      FlatRange s = l.shard(r);
      EXPECT_EQ(s.offset, next) << "world " << world << " rank " << r;
      EXPECT_LE(s.count, l.block());
      EXPECT_GE(s.count, l.block() - 1);
      next += s.count;
    }
    EXPECT_EQ(next, 19);
    auto counts = l.shard_counts();
    EXPECT_EQ(std::accumulate(counts.begin(), counts.end(), std::size_t{0}), 19u);
  }
}

TEST(FlatLayout, PaddedSegmentsPlaceEachElementInItsOwnersBlock) {
  FlatLayout l({5, 0, 13, 1}, 3);  // shares 7, 6, 6; block 7
  std::vector<int> hits(static_cast<std::size_t>(l.block() * 3), 0);
  for (std::size_t p = 0; p < l.params(); ++p) {
    std::int64_t covered = 0;
    for (const auto& seg : l.padded_segments(p)) {
      for (std::int64_t k = 0; k < seg.len; ++k) {
        const std::int64_t flat = l.offset(p) + seg.src + k;
        const std::int64_t dst = seg.dst + k;
        const int owner = static_cast<int>(dst / l.block());
        EXPECT_EQ(flat, l.shard(owner).offset + dst % l.block());
        ++hits[static_cast<std::size_t>(dst)];
      }
      covered += seg.len;
    }
    EXPECT_EQ(covered, l.numel(p));
  }
  for (int r = 0; r < 3; ++r) {
    for (std::int64_t k = 0; k < l.block(); ++k) {
      EXPECT_EQ(hits[static_cast<std::size_t>(r * l.block() + k)], k < l.shard(r).count ? 1 : 0);
    }
  }
}

}  // namespace
}  // namespace kiln::parallel::zero
