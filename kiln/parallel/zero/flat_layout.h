// FlatLayout: how one unit's parameters lie in a flat vector, and how that
// vector is sharded over the ranks of a data-parallel group.
//
// The unit's parameters are concatenated in order (unpadded, `total`
// elements). Rank r owns the even share ckpt::even_rows(total, r, world): the
// first total % world ranks hold one element more. That is the split the
// checkpoint loader uses, so a shard is saved as its rows of the unit's flat
// tensor and loads onto any other world size by the loader's own split.
//
// Reduce-scatter needs equal blocks, so gradients go through a padded
// staging vector of world × block() elements: rank r's share sits at the
// start of block r, the rest of the block is zero (Note [Padded staging]).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kiln::parallel::zero {

struct FlatRange {
  std::int64_t offset = 0;
  std::int64_t count = 0;
};

class FlatLayout {
 public:
  FlatLayout(std::vector<std::int64_t> numels, int world);

  int world() const { return world_; }
  std::int64_t total() const { return total_; }
  std::size_t params() const { return numels_.size(); }
  std::int64_t numel(std::size_t param) const { return numels_[param]; }
  std::int64_t offset(std::size_t param) const { return offsets_[param]; }

  // Rank r's share of the unpadded flat vector.
  FlatRange shard(int rank) const;
  // Elements per block of the padded staging vector: the largest share.
  std::int64_t block() const;
  // Every rank's share size, in rank order (allgatherv's counts).
  std::vector<std::size_t> shard_counts() const;

  // Where parameter `param`'s elements go in the padded staging vector: one
  // segment per share it overlaps (src: offset within the parameter).
  struct Segment {
    std::int64_t src = 0;
    std::int64_t dst = 0;
    std::int64_t len = 0;
  };
  std::vector<Segment> padded_segments(std::size_t param) const;

 private:
  std::vector<std::int64_t> numels_;
  std::vector<std::int64_t> offsets_;
  std::int64_t total_ = 0;
  int world_;
};

}  // namespace kiln::parallel::zero
