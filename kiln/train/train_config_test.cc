// kiln train's config: defaults, strictness (errors name the field), and the
// learning-rate schedule.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "kiln/train/progress_line.h"
#include "kiln/train/train_config.h"

namespace kiln::train {
namespace {

TEST(TrainConfig, ParsesAReferenceConfig) {
  auto c = parse_train_config_string(R"(
[model]
kind = "gpt"
d_model = 64
heads = 4
positions = "rotary"
[data]
dir = "data/text"
prepare = "text"
sources = ["/a.txt", "/b.txt"]
[optim]
kind = "sgd"
lr = 0.1
warmup_steps = 10
grad_clip = 1.0
[train]
batch_size = 64
grad_accum = 2
max_steps = 100
[ddp]
bucket_cap_mib = "auto"
)", "inline.toml");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->model.kind, ModelKind::kGpt);
  EXPECT_TRUE(c->model.rotary);
  EXPECT_EQ(c->data.sources.size(), 2u);
  EXPECT_EQ(c->data.cache_dir, "data/text/.cache");
  EXPECT_EQ(c->optim.kind, OptimizerKind::kSgd);
  EXPECT_EQ(c->train.grad_accum, 2);
  EXPECT_FALSE(c->ddp.bucket_cap_mib.has_value());
}

TEST(TrainConfig, ParallelPrefetchDefaultsToOneUnit) {
  auto c = parse_train_config_string(
      "[model]\nkind = \"cnn\"\n[data]\ndir = \"d\"\n[parallel]\nstrategy = \"zero3\"\nprefetch = 3\n",
      "inline.toml");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->parallel.prefetch, 3);
  auto d = parse_train_config_string("[model]\nkind = \"cnn\"\n[data]\ndir = \"d\"\n", "inline.toml");
  ASSERT_TRUE(d.is_ok()) << d.status().to_string();
  EXPECT_EQ(d->parallel.prefetch, 1);
}

// Every shipped example parses; gpt_zero3.toml is the issue's fully sharded
// example and must stay zero3.
TEST(TrainConfig, ShippedExamplesParse) {
  const std::string dir = std::string(KILN_SOURCE_DIR) + "/examples/train";
  int seen = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().extension() != ".toml") continue;
    auto c = parse_train_config_file(e.path().string());
    EXPECT_TRUE(c.is_ok()) << e.path() << ": " << c.status().to_string();
    ++seen;
  }
  EXPECT_GE(seen, 4) << dir;
  auto z = parse_train_config_file(dir + "/gpt_zero3.toml");
  ASSERT_TRUE(z.is_ok()) << z.status().to_string();
  EXPECT_EQ(z->parallel.strategy, Strategy::kZero3);
}

TEST(TrainConfig, ErrorsNameTheField) {
  struct Case {
    const char* toml;
    const char* expect;
  } cases[] = {
      {"[model]\nkind = \"rnn\"\n[data]\ndir = \"d\"\n", "'model.kind'"},
      {"[model]\nkind = \"cnn\"\n", "'data.dir' is required"},
      {"[model]\nkind = \"cnn\"\n[data]\ndir = \"d\"\n[optim]\nlr = -1\n", "'optim.lr'"},
      {"[model]\nkind = \"cnn\"\n[data]\ndir = \"d\"\n[train]\nbatchsize = 3\n",
       "unknown field 'train.batchsize' at line 6"},
      {"[model]\nkind = \"gpt\"\nd_model = 10\nheads = 4\n[data]\ndir = \"d\"\n", "'model.heads'"},
      {"[model]\nkind = \"cnn\"\n[data]\ndir = \"d\"\nprepare = \"text\"\n", "'data.sources'"},
      {"[model\nkind = 1", "inline.toml:1"},
      {"[model]\nkind = \"cnn\"\n[data]\ndir = \"d\"\n[parallel]\nstrategy = \"zero3\"\nprefetch = 0\n",
       "'parallel.prefetch'"},
      {"[model]\nkind = \"cnn\"\n[data]\ndir = \"d\"\n[parallel]\nstrategy = \"zero3\"\nprefetch = 9\n",
       "must be 1 to 8 units"},
      {"[model]\nkind = \"cnn\"\n[data]\ndir = \"d\"\n[parallel]\nstrategy = \"zero2\"\nprefetch = 2\n",
       "only strategy = \"zero3\""},
      {"[model]\nkind = \"cnn\"\n[data]\ndir = \"d\"\n[parallel]\nmemory_cgroup_reserve_mib = 8\n",
       "applies with memory_cap_from_cgroup = true"},
      {"[model]\nkind = \"gpt\"\n[data]\ndir = \"d\"\n[parallel]\ntp = 2\nmemory_cap_from_cgroup = true\n",
       "'parallel.memory_cap_from_cgroup'"},
      {"[model]\nkind = \"gpt\"\n[data]\ndir = \"d\"\n[parallel]\npp = 2\nmemory_cap_mib = 100\n",
       "applies without tp and pp"},
  };
  for (const Case& k : cases) {
    auto c = parse_train_config_string(k.toml, "inline.toml");
    ASSERT_FALSE(c.is_ok()) << k.toml;
    EXPECT_EQ(c.status().code(), Code::kInvalidArgument);
    EXPECT_NE(c.status().message().find(k.expect), std::string::npos)
        << c.status().to_string() << "\nexpected: " << k.expect;
  }
}

// What tp or pp > 1 accepts across the replicas: ZeRO-1 with bf16, clipping
// and checkpoints (examples/train/gpt_3d_zero1_bf16.toml).
TEST(TrainConfig, ThreeDAcceptsZero1WithBf16ClippingAndCheckpoints) {
  auto c = parse_train_config_string(R"(
[model]
kind = "gpt"
[data]
dir = "d"
[optim]
grad_clip = 1.0
[checkpoint]
dir = "ckpt"
[parallel]
tp = 2
pp = 2
microbatches = 4
strategy = "zero1"
precision = "bf16"
sequence_parallel = true
)", "inline.toml");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_TRUE(c->parallel.three_d());
  EXPECT_EQ(c->parallel.strategy, Strategy::kZero1);
  EXPECT_EQ(c->parallel.precision, Precision::kBf16);
  EXPECT_EQ(c->optim.grad_clip, 1.0);
  EXPECT_TRUE(c->parallel.sequence_parallel);
}

TEST(LearningRate, WarmsUpLinearlyThenFollowsTheCosineToMin) {
  OptimConfig o{.lr = 1.0, .min_lr = 0.1, .warmup_steps = 10};
  EXPECT_DOUBLE_EQ(learning_rate(o, 0, 110), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(o, 9, 110), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(o, 10, 110), 1.0);
  EXPECT_NEAR(learning_rate(o, 60, 110), 0.55, 1e-12);  // half way: the mean of lr and min_lr
  EXPECT_NEAR(learning_rate(o, 110, 110), 0.1, 1e-12);
  o.schedule = Schedule::kConstant;
  EXPECT_DOUBLE_EQ(learning_rate(o, 60, 110), 1.0);
}

TEST(ProgressLine, ShowsStepLossRateEtaAndPhaseShares) {
  std::array<double, diag::kPhaseCount> phases{};
  phases[static_cast<int>(diag::Phase::kDataWait)] = 0.1;
  phases[static_cast<int>(diag::Phase::kBackward)] = 0.5;
  std::string s = ProgressLine::format(50, 100, 0.25, 1234, 75, phases, 1.0);
  EXPECT_NE(s.find("step  50/100 [==========>         ]"), std::string::npos) << s;
  EXPECT_NE(s.find("loss 0.2500"), std::string::npos) << s;
  EXPECT_NE(s.find("1234 samples/s"), std::string::npos) << s;
  EXPECT_NE(s.find("ETA 1:15"), std::string::npos) << s;
  EXPECT_NE(s.find("data 10% fwd 0% bwd 50%"), std::string::npos) << s;
}

}  // namespace
}  // namespace kiln::train
