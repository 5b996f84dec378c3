#include "kiln/plan/config.h"

#include <gtest/gtest.h>

namespace kiln::plan {
namespace {

constexpr const char* kBase = R"(
[model]
layers = 24
hidden = 2048
heads = 16
seq_len = 2048
vocab = 50304

[cluster]
gpu = "H100-SXM"
nodes = 2

[layout]
tp = 2
pp = 2
global_batch = 64
)";

TEST(ConfigTest, ParsesWithDefaults) {
  auto c = parse_config_string(kBase, "base.toml");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->cluster.gpu.id, "h100-sxm");
  EXPECT_EQ(c->cluster.gpus(), 16);
  EXPECT_EQ(c->layout.dp, 4);        // the rest of the GPUs
  EXPECT_EQ(c->model.kv_heads, 16);  // MHA by default
  EXPECT_EQ(c->model.ffn_hidden, 4 * 2048);
  EXPECT_TRUE(c->layout.sequence_parallel);  // on when tp > 1
  EXPECT_EQ(c->layout.attention, AttentionKernel::kFlash);
  EXPECT_DOUBLE_EQ(c->cluster.nic_bits_per_s, 400e9);
  EXPECT_GT(c->reliability.job_mtbf_s, 0);
}

TEST(ConfigTest, ExampleScenarioParses) {
  auto c = parse_config_file(std::string(KILN_SOURCE_DIR) + "/examples/plan/llama70b-h100.toml");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->cluster.gpus(), 256);
  EXPECT_EQ(c->layout.tp * c->layout.pp * c->layout.dp, 256);
  EXPECT_DOUBLE_EQ(c->reliability.job_mtbf_s, 7200);
  EXPECT_EQ(c->reliability.checkpoint_every_steps, 500);
}

TEST(ConfigTest, AnOversizedConfigIsRefusedBeforeParsing) {
  auto c = parse_config_string(std::string(5 << 20, '#'), "huge.toml");
  ASSERT_FALSE(c.is_ok());
  EXPECT_EQ(c.status().code(), Code::kInvalidArgument);
  EXPECT_NE(c.status().message().find("limit of a config file"), std::string::npos)
      << c.status().to_string();
}

TEST(ConfigTest, MalformedTomlNamesFileAndLine) {
  auto c = parse_config_string("[model]\nlayers = = 3\n", "bad.toml");
  ASSERT_FALSE(c.is_ok());
  EXPECT_EQ(c.status().code(), Code::kInvalidArgument);
  EXPECT_NE(c.status().message().find("bad.toml:2"), std::string::npos) << c.status().message();
}

TEST(ConfigTest, WrongTypeNamesTheField) {
  std::string text = kBase;
  text.replace(text.find("layers = 24"), 11, "layers = \"24\"");
  auto c = parse_config_string(text, "t.toml");
  ASSERT_FALSE(c.is_ok());
  EXPECT_NE(c.status().message().find("'model.layers'"), std::string::npos) << c.status().message();
  EXPECT_NE(c.status().message().find("integer"), std::string::npos);
}

TEST(ConfigTest, MissingFieldIsNamed) {
  std::string text = kBase;
  text.erase(text.find("hidden = 2048"), 13);
  auto c = parse_config_string(text, "t.toml");
  ASSERT_FALSE(c.is_ok());
  EXPECT_NE(c.status().message().find("'model.hidden' is required"), std::string::npos)
      << c.status().message();
}

TEST(ConfigTest, UnknownFieldIsAnError) {
  std::string text = std::string(kBase) + "tpp = 4\n";
  auto c = parse_config_string(text, "t.toml");
  ASSERT_FALSE(c.is_ok());
  EXPECT_NE(c.status().message().find("unknown field 'layout.tpp'"), std::string::npos)
      << c.status().message();
}

TEST(ConfigTest, UnknownGpuIsNamed) {
  std::string text = kBase;
  text.replace(text.find("H100-SXM"), 8, "V100");
  auto c = parse_config_string(text, "t.toml");
  ASSERT_FALSE(c.is_ok());
  EXPECT_NE(c.status().message().find("'cluster.gpu'"), std::string::npos);
  EXPECT_NE(c.status().message().find("V100"), std::string::npos);
}

TEST(ConfigTest, InconsistentLayoutIsRejected) {
  auto c = parse_config_string(kBase, "t.toml", {"layout.dp=3"});
  ASSERT_FALSE(c.is_ok());
  EXPECT_NE(c.status().message().find("tp*pp*dp"), std::string::npos) << c.status().message();
  c = parse_config_string(kBase, "t.toml", {"layout.pp=5"});
  ASSERT_FALSE(c.is_ok());
}

TEST(ConfigTest, OverridesApply) {
  auto c = parse_config_string(kBase, "t.toml",
                               {"layout.tp=4", "layout.pp=1", "layout.recompute=full",
                                "layout.zero=3", "cluster.nic_gbits_per_s=200.5"});
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->layout.tp, 4);
  EXPECT_EQ(c->layout.dp, 4);
  EXPECT_EQ(c->layout.recompute, Recompute::kFull);
  EXPECT_EQ(c->layout.zero, 3);
  EXPECT_DOUBLE_EQ(c->cluster.nic_bits_per_s, 200.5e9);
  EXPECT_FALSE(parse_config_string(kBase, "t.toml", {"nonsense"}).is_ok());
  auto bad = parse_config_string(kBase, "t.toml", {"layout.recompute=sometimes"});
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("'layout.recompute'"), std::string::npos);
}

TEST(ConfigTest, TheSoftwareStackIsDeclaredPerRun) {
  // Hopper defaults to asynchronous MMAs (wgmma), Ampere has only mma.sync.
  auto c = parse_config_string(kBase, "t.toml");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->layout.mma, MmaIssue::kAsync);
  c = parse_config_string(kBase, "t.toml", {"layout.mma=sync"});
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->layout.mma, MmaIssue::kSync);
  c = parse_config_string(kBase, "t.toml", {"cluster.gpu=a100-sxm-80g"});
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->layout.mma, MmaIssue::kSync);
  c = parse_config_string(kBase, "t.toml", {"cluster.gpu=a100-sxm-80g", "layout.mma=async"});
  ASSERT_FALSE(c.is_ok());
  EXPECT_NE(c.status().message().find("layout.mma"), std::string::npos) << c.status().message();
  EXPECT_NE(c.status().message().find("a100-sxm-80g"), std::string::npos) << c.status().message();
  c = parse_config_string(kBase, "t.toml", {"layout.mma=fast"});
  ASSERT_FALSE(c.is_ok());
  EXPECT_NE(c.status().message().find("'layout.mma'"), std::string::npos) << c.status().message();
  c = parse_config_string(kBase, "t.toml", {"layout.recompute=save_qkv"});
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->layout.recompute, Recompute::kSaveQkv);
}

TEST(ConfigTest, HybridShardGroupMustDivideTheDataParallelRanks) {
  // tp 2 x pp 2 on 16 GPUs: dp 4.
  auto c = parse_config_string(kBase, "t.toml", {"layout.zero=3", "layout.zero3_shard_group=2"});
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->layout.zero3_shards(), 2);
  EXPECT_EQ(c->layout.zero3_replicas(), 2);
  c = parse_config_string(kBase, "t.toml", {"layout.zero=3", "layout.zero3_shard_group=3"});
  ASSERT_FALSE(c.is_ok());
  EXPECT_NE(c.status().message().find("does not divide layout.dp (4)"), std::string::npos)
      << c.status().message();
  c = parse_config_string(kBase, "t.toml", {"layout.zero=1", "layout.zero3_shard_group=2"});
  ASSERT_FALSE(c.is_ok());
  EXPECT_NE(c.status().message().find("needs layout.zero = 3"), std::string::npos)
      << c.status().message();
  c = parse_config_string(kBase, "t.toml");
  ASSERT_TRUE(c.is_ok());
  EXPECT_EQ(c->layout.zero3_shards(), c->layout.dp);
  EXPECT_EQ(c->layout.zero3_replicas(), 1);
}

TEST(ConfigTest, StageLayersAreReadFromAnArray) {
  // 24 layers on 2 stages, explicitly 11 + 13; and 25 layers split automatically.
  const std::string text = std::string(kBase) + "stage_layers = [11, 13]\n";
  auto explicit_split = parse_config_string(text, "s.toml");
  ASSERT_TRUE(explicit_split.is_ok()) << explicit_split.status().to_string();
  EXPECT_EQ(explicit_split->layout.stage_layers, (std::vector<std::int64_t>{11, 13}));
  auto uneven = parse_config_string(kBase, "s.toml", {"model.layers=25"});
  ASSERT_TRUE(uneven.is_ok()) << uneven.status().to_string();
  EXPECT_TRUE(uneven->layout.stage_layers.empty());  // automatic
}

TEST(ConfigTest, BadStageLayersNameTheField) {
  auto not_ints =
      parse_config_string(std::string(kBase) + "stage_layers = [11, \"x\"]\n", "s.toml");
  ASSERT_FALSE(not_ints.is_ok());
  EXPECT_NE(not_ints.status().message().find("layout.stage_layers"), std::string::npos)
      << not_ints.status().message();
  EXPECT_NE(not_ints.status().message().find("s.toml:17"), std::string::npos)
      << not_ints.status().message();
  auto wrong_sum = parse_config_string(std::string(kBase) + "stage_layers = [11, 12]\n", "s.toml");
  ASSERT_FALSE(wrong_sum.is_ok());
  EXPECT_NE(wrong_sum.status().message().find("sum to 23"), std::string::npos)
      << wrong_sum.status().message();
  auto wrong_count =
      parse_config_string(std::string(kBase) + "stage_layers = [8, 8, 8]\n", "s.toml");
  ASSERT_FALSE(wrong_count.is_ok());
  EXPECT_NE(wrong_count.status().message().find("3 entries"), std::string::npos)
      << wrong_count.status().message();
}

TEST(ConfigTest, MissingFileIsNotFound) {
  auto c = parse_config_file("/nonexistent/plan.toml");
  ASSERT_FALSE(c.is_ok());
  EXPECT_EQ(c.status().code(), Code::kNotFound);
}

}  // namespace
}  // namespace kiln::plan
