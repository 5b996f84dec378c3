#include "kiln/plan/search.h"

#include <gtest/gtest.h>

namespace kiln::plan {
namespace {

PlanConfig scenario() {
  auto c = parse_config_file(std::string(KILN_SOURCE_DIR) + "/examples/plan/llama70b-h100.toml");
  EXPECT_TRUE(c.is_ok()) << c.status().to_string();
  return *c;
}

TEST(SearchTest, EveryListedLayoutFitsAndUsesEveryGpu) {
  const PlanConfig base = scenario();
  const SearchResult r = search_layouts(base);
  ASSERT_FALSE(r.top.empty());
  EXPECT_LE(r.top.size(), 10u);
  for (const auto& p : r.top) {
    const auto& l = p.config.layout;
    EXPECT_EQ(l.tp * l.pp * l.dp, base.cluster.gpus());
    EXPECT_TRUE(p.memory.fits);
    EXPECT_LE(p.memory.total, p.memory.capacity);
    EXPECT_LE(l.tp, base.cluster.gpus_per_node);
    EXPECT_EQ(base.model.layers % l.pp, 0);
    EXPECT_EQ(l.global_batch % (l.dp * l.micro_batch), 0);
    EXPECT_TRUE(check_layout(p.config).is_ok());
  }
  for (size_t i = 1; i < r.top.size(); ++i) {
    EXPECT_GE(r.top[i - 1].tokens_per_s, r.top[i].tokens_per_s);
  }
  std::int64_t rejected = 0;
  for (const auto& [why, n] : r.rejected) rejected += n;
  EXPECT_EQ(rejected + r.feasible, r.considered);
  EXPECT_GT(r.rejected.at("out of memory"), 0);
  EXPECT_GT(r.rejected.at("indivisible"), 0);
}

TEST(SearchTest, BestLayoutIsAtLeastAsFastAsTheConfiguredOne) {
  const PlanConfig base = scenario();
  const SearchResult r = search_layouts(base);
  auto mine = make_plan(base);
  ASSERT_TRUE(mine.is_ok());
  ASSERT_FALSE(r.top.empty());
  if (mine->memory.fits) {
    EXPECT_GE(r.top.front().tokens_per_s, mine->tokens_per_s * 0.999);
  }
}

TEST(SearchTest, NothingFitsOnATinyCluster) {
  PlanConfig base = scenario();
  base.cluster.nodes = 1;
  base.layout.global_batch = 8;
  const SearchResult r = search_layouts(base);
  EXPECT_TRUE(r.top.empty());  // 70B × 16 B/param does not fit 8 × 80 GB
  EXPECT_GT(r.rejected.at("out of memory"), 0);
}

}  // namespace
}  // namespace kiln::plan
