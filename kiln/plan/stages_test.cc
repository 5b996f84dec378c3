#include "kiln/plan/stages.h"

#include <gtest/gtest.h>

namespace kiln::plan {
namespace {

using Stages = std::vector<std::int64_t>;

TEST(StagesTest, EvenWhenThePipelineDividesTheLayers) {
  EXPECT_EQ(balanced_stage_layers(96, 8), Stages(8, 12));
  EXPECT_EQ(balanced_stage_layers(24, 1), Stages{24});
}

TEST(StagesTest, TheOuterStagesGiveUpLayersFirst) {
  // Llama 3 405B: 126 layers on 16 stages, one fewer on the first and last.
  Stages llama(16, 8);
  llama.front() = 7;
  llama.back() = 7;
  EXPECT_EQ(balanced_stage_layers(126, 16), llama);
  // BLOOM: 70 layers on 12 stages.
  Stages bloom(12, 6);
  bloom.front() = 5;
  bloom.back() = 5;
  EXPECT_EQ(balanced_stage_layers(70, 12), bloom);
  // One short: the last stage (it also runs the loss) gives it up.
  EXPECT_EQ(balanced_stage_layers(25, 2), (Stages{13, 12}));
  // Three short: last, first, then the last but one.
  EXPECT_EQ(balanced_stage_layers(13, 4), (Stages{3, 4, 3, 3}));
}

TEST(StagesTest, ParseAndFormat) {
  EXPECT_EQ(*parse_stage_layers("7 8,8;7"), (Stages{7, 8, 8, 7}));
  EXPECT_EQ(format_stage_layers({7, 8, 7}), "7 8 7");
  EXPECT_FALSE(parse_stage_layers("7 0").is_ok());
  EXPECT_FALSE(parse_stage_layers("7 x").is_ok());
  EXPECT_FALSE(parse_stage_layers("  ").is_ok());
}

TEST(StagesTest, ChecksNameWhatIsWrong) {
  PlanConfig c;
  c.model.layers = 24;
  c.layout.pp = 2;
  c.layout.vpp = 2;
  EXPECT_TRUE(check_stage_layers(c, "x: ").is_ok());
  c.layout.stage_layers = {1, 23};
  EXPECT_NE(check_stage_layers(c, "x: ").message().find("below layout.vpp"), std::string::npos);
  c.layout.stage_layers = {12, 11};
  EXPECT_NE(check_stage_layers(c, "x: ").message().find("sum to 23"), std::string::npos);
  c.layout.stage_layers = {12};
  EXPECT_NE(check_stage_layers(c, "x: ").message().find("1 entries"), std::string::npos);
  c.layout.stage_layers.clear();
  c.model.layers = 3;
  EXPECT_NE(check_stage_layers(c, "x: ").message().find("fewer than"), std::string::npos);
}

}  // namespace
}  // namespace kiln::plan
