#include "kiln/parallel/mesh/mesh_layout.h"

#include <fmt/format.h>

namespace kiln::parallel {

Result<MeshLayout> MeshLayout::create(int world, int tp, int pp) {
  if (world < 1 || tp < 1 || pp < 1) {
    return invalid_argument(fmt::format("device mesh: world {}, tp {} and pp {} must all be >= 1",
                                        world, tp, pp));
  }
  if (world % (tp * pp) != 0) {
    return invalid_argument(fmt::format(
        "device mesh: tp {} x pp {} = {} does not divide the world size {} (dp = world / (tp x pp))",
        tp, pp, tp * pp, world));
  }
  return MeshLayout(MeshShape{.tp = tp, .pp = pp, .dp = world / (tp * pp)});
}

MeshCoord MeshLayout::coord(int rank) const {
  return MeshCoord{.tp = rank % shape_.tp,
                   .pp = rank / (shape_.tp * shape_.dp),
                   .dp = (rank / shape_.tp) % shape_.dp};
}

int MeshLayout::rank_of(MeshCoord c) const {
  return c.pp * (shape_.dp * shape_.tp) + c.dp * shape_.tp + c.tp;
}

std::vector<int> MeshLayout::tensor_group(int rank) const {
  MeshCoord c = coord(rank);
  std::vector<int> ranks;
  for (int t = 0; t < shape_.tp; ++t) ranks.push_back(rank_of({.tp = t, .pp = c.pp, .dp = c.dp}));
  return ranks;
}

std::vector<int> MeshLayout::data_group(int rank) const {
  MeshCoord c = coord(rank);
  std::vector<int> ranks;
  for (int d = 0; d < shape_.dp; ++d) ranks.push_back(rank_of({.tp = c.tp, .pp = c.pp, .dp = d}));
  return ranks;
}

std::vector<int> MeshLayout::pipeline_group(int rank) const {
  MeshCoord c = coord(rank);
  std::vector<int> ranks;
  for (int p = 0; p < shape_.pp; ++p) ranks.push_back(rank_of({.tp = c.tp, .pp = p, .dp = c.dp}));
  return ranks;
}

int MeshLayout::tensor_group_id(int rank) const {
  MeshCoord c = coord(rank);
  return c.pp * shape_.dp + c.dp;
}

int MeshLayout::data_group_id(int rank) const {
  MeshCoord c = coord(rank);
  return c.pp * shape_.tp + c.tp;
}

int MeshLayout::pipeline_group_id(int rank) const {
  MeshCoord c = coord(rank);
  return c.dp * shape_.tp + c.tp;
}

std::string MeshLayout::describe(int rank) const {
  MeshCoord c = coord(rank);
  return fmt::format("dp {} pp {} tp {}", c.dp, c.pp, c.tp);
}

std::string MeshLayout::describe_shape() const {
  return fmt::format("tp {} x pp {} x dp {}", shape_.tp, shape_.pp, shape_.dp);
}

}  // namespace kiln::parallel
