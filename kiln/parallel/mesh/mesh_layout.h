// MeshLayout: how the ranks of a world form the tensor, data and pipeline
// groups of a 3D-parallel job, in Megatron-LM's rank order.
//
// Tensor parallelism is innermost (consecutive ranks: the fastest links, one
// host), data parallelism next, pipeline stages outermost:
//
//   rank = pp * (dp_size * tp_size) + dp * tp_size + tp
//
// so TP 2 x PP 2 x DP 2 on 8 ranks puts ranks {0,1} in one tensor group,
// {0,2} in one data group and {0,4} in one pipeline. No communication here:
// DeviceMesh (device_mesh.h) forms the groups' communicators from this.
#pragma once

#include <string>
#include <vector>

#include "kiln/base/status.h"

namespace kiln::parallel {

struct MeshShape {
  int tp = 1;
  int pp = 1;
  int dp = 1;
  int world() const { return tp * pp * dp; }
};

struct MeshCoord {
  int tp = 0;
  int pp = 0;
  int dp = 0;
};

class MeshLayout {
 public:
  // InvalidArgument when a size is < 1 or tp * pp does not divide `world`
  // (dp = world / (tp * pp)).
  static Result<MeshLayout> create(int world, int tp, int pp);

  const MeshShape& shape() const { return shape_; }
  int world() const { return shape_.world(); }

  MeshCoord coord(int rank) const;
  int rank_of(MeshCoord c) const;

  // The world ranks of `rank`'s groups, in group-rank order (a rank's index
  // in its tensor group is its tp coordinate, and so on).
  std::vector<int> tensor_group(int rank) const;
  std::vector<int> data_group(int rank) const;
  std::vector<int> pipeline_group(int rank) const;

  // Stable ids of `rank`'s groups, one per group of each kind (split colors).
  int tensor_group_id(int rank) const;
  int data_group_id(int rank) const;
  int pipeline_group_id(int rank) const;

  // "dp 1 pp 0 tp 1": how logs and diagnosis name a rank.
  std::string describe(int rank) const;
  // "tp 2 x pp 2 x dp 2"
  std::string describe_shape() const;

 private:
  explicit MeshLayout(MeshShape s) : shape_(s) {}
  MeshShape shape_;
};

}  // namespace kiln::parallel
