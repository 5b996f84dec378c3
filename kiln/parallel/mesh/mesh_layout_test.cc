#include "kiln/parallel/mesh/mesh_layout.h"

#include <gtest/gtest.h>

#include <set>

namespace kiln::parallel {
namespace {

TEST(MeshLayout, FollowsMegatronRankOrderTensorInnermost) {
  auto m = MeshLayout::create(8, 2, 2);
  ASSERT_TRUE(m.is_ok()) << m.status().to_string();
  EXPECT_EQ(m->shape().dp, 2);
  EXPECT_EQ(m->tensor_group(0), (std::vector<int>{0, 1}));
  EXPECT_EQ(m->data_group(0), (std::vector<int>{0, 2}));
  EXPECT_EQ(m->pipeline_group(0), (std::vector<int>{0, 4}));
  EXPECT_EQ(m->pipeline_group(7), (std::vector<int>{3, 7}));
  EXPECT_EQ(m->describe(5), "dp 0 pp 1 tp 1");
  EXPECT_EQ(m->describe_shape(), "tp 2 x pp 2 x dp 2");
}

TEST(MeshLayout, EveryRankIsInExactlyOneGroupOfEachKindAtItsCoordinate) {
  for (auto [world, tp, pp] : {std::tuple{8, 2, 2}, {8, 1, 4}, {8, 2, 4}, {6, 3, 1}, {4, 1, 1}, {12, 2, 3}}) {
    auto m = MeshLayout::create(world, tp, pp);
    ASSERT_TRUE(m.is_ok());
    std::set<int> ids[3];
    for (int r = 0; r < world; ++r) {
      const MeshCoord c = m->coord(r);
      EXPECT_EQ(m->rank_of(c), r);
      EXPECT_EQ(m->tensor_group(r)[c.tp], r);
      EXPECT_EQ(m->data_group(r)[c.dp], r);
      EXPECT_EQ(m->pipeline_group(r)[c.pp], r);
      // Members of a group agree on its id; groups of a kind partition the world.
      for (int peer : m->tensor_group(r)) EXPECT_EQ(m->tensor_group_id(peer), m->tensor_group_id(r));
      for (int peer : m->data_group(r)) EXPECT_EQ(m->data_group_id(peer), m->data_group_id(r));
      for (int peer : m->pipeline_group(r)) EXPECT_EQ(m->pipeline_group_id(peer), m->pipeline_group_id(r));
      ids[0].insert(m->tensor_group_id(r));
      ids[1].insert(m->data_group_id(r));
      ids[2].insert(m->pipeline_group_id(r));
    }
    EXPECT_EQ(static_cast<int>(ids[0].size()), world / tp);
    EXPECT_EQ(static_cast<int>(ids[1].size()), tp * pp);
    EXPECT_EQ(static_cast<int>(ids[2].size()), world / pp);
  }
}

TEST(MeshLayout, ASizeThatDoesNotDivideTheWorldIsNamed) {
  auto m = MeshLayout::create(6, 2, 2);
  ASSERT_FALSE(m.is_ok());
  EXPECT_NE(m.status().to_string().find("does not divide the world size 6"), std::string::npos);
  EXPECT_FALSE(MeshLayout::create(4, 0, 1).is_ok());
}

}  // namespace
}  // namespace kiln::parallel
