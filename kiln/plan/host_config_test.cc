// A plan whose cluster is a CPU host profile (cluster.profile, --profile).
#include <gtest/gtest.h>

#include <fstream>

#include "kiln/base/testing/temp_dir.h"
#include "kiln/plan/config.h"
#include "kiln/plan/host_profile.h"

namespace kiln::plan {
namespace {

HostProfile two_cores() {
  HostProfile p;
  p.host = "test";
  p.cores = 2;
  p.memory_bytes = 1e10;
  for (auto [r, threads] : {std::pair{&p.one_thread, 1}, std::pair{&p.all_threads, 2}}) {
    r->threads = threads;
    r->linear_fwd = {5e-6, 50e9, 0};
    r->linear_bwd = {8e-6, 25e9, 0};
    r->attention_fwd = {5e-6, 20e9, 1e-9};
    r->attention_bwd = {8e-6, 10e9, 3e-9};
    r->gelu_bwd = {1e-6, 10e-9};
  }
  p.stream_bytes_per_s = 10e9;
  p.stream_all_bytes_per_s = 15e9;
  p.shm = {3e-6, 5e9};
  p.tcp = {30e-6, 1e9};
  return p;
}

void write(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

constexpr const char* kPlan = R"([model]
layers = 4
hidden = 128
heads = 4
seq_len = 128
vocab = 256
learned_positions = false
tied_embeddings = false
dropout = false

[cluster]
profile = "host.toml"

[layout]
global_batch = 32
)";

class HostConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    write(dir_.path() + "/host.toml", host_profile_to_toml(two_cores()));
    write(dir_.path() + "/plan.toml", kPlan);
  }
  std::string plan() const { return dir_.path() + "/plan.toml"; }
  testing::TempDir dir_{"kiln-plan-host-"};
};

TEST_F(HostConfigTest, AProfileRelativeToThePlanFileMakesACpuHost) {
  auto c = parse_config_file(plan(), {"layout.tp=2", "layout.pp=2", "layout.dp=2"});
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  ASSERT_TRUE(c->cluster.host);
  EXPECT_EQ(c->cluster.host->cores, 2);
  EXPECT_EQ(c->cluster.nodes, 1);
  EXPECT_EQ(c->cluster.gpus_per_node, 8);  // ranks on the host: tp·pp·dp
  auto alone = parse_config_file(plan());
  ASSERT_TRUE(alone.is_ok()) << alone.status().to_string();
  EXPECT_EQ(alone->layout.dp, 1);  // no GPU count to fill: one replica
  EXPECT_EQ(alone->cluster.gpus_per_node, 1);
}

TEST_F(HostConfigTest, MicrobatchesSetTheMicroBatchSize) {
  auto c = parse_config_file(plan(), {"layout.dp=2", "layout.microbatches=4"});
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->layout.micro_batch, 4);  // 32 sequences / (2 replicas × 4)
  EXPECT_EQ(c->layout.micro_batches(), 4);
  auto both = parse_config_file(plan(), {"layout.microbatches=4", "layout.micro_batch=2"});
  ASSERT_FALSE(both.is_ok());
  EXPECT_NE(both.status().message().find("exclusive"), std::string::npos) << both.status().to_string();
  auto indivisible = parse_config_file(plan(), {"layout.dp=2", "layout.microbatches=5"});
  ASSERT_FALSE(indivisible.is_ok());
  EXPECT_NE(indivisible.status().message().find("layout.microbatches"), std::string::npos)
      << indivisible.status().to_string();
}

TEST_F(HostConfigTest, AGpuAndAProfileAreExclusive) {
  auto c = parse_config_file(plan(), {"cluster.gpu=h100-sxm"});
  ASSERT_FALSE(c.is_ok());
  EXPECT_NE(c.status().message().find("cluster.gpu"), std::string::npos) << c.status().to_string();
}

TEST_F(HostConfigTest, AMalformedProfileNamesThePlanTheProfileAndTheField) {
  std::string text = host_profile_to_toml(two_cores());
  const auto at = text.find("linear_fwd_gflops = ");
  text.replace(at, text.find('\n', at) - at, "linear_fwd_gflops = \"many\"");
  write(dir_.path() + "/host.toml", text);
  auto c = parse_config_file(plan());
  ASSERT_FALSE(c.is_ok());
  EXPECT_EQ(c.status().code(), Code::kInvalidArgument);
  for (const std::string& needle : {plan(), std::string("cluster.profile"),
                                    dir_.path() + "/host.toml",
                                    std::string("compute_1_thread.linear_fwd_gflops")}) {
    EXPECT_NE(c.status().message().find(needle), std::string::npos)
        << needle << " not in " << c.status().to_string();
  }
  auto missing = parse_config_file(plan(), {"cluster.profile=nowhere.toml"});
  ASSERT_FALSE(missing.is_ok());
  EXPECT_NE(missing.status().message().find("nowhere.toml"), std::string::npos)
      << missing.status().to_string();
}

}  // namespace
}  // namespace kiln::plan
