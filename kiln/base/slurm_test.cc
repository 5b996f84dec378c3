#include "kiln/base/slurm.h"

#include <gtest/gtest.h>
#include <stdlib.h>

namespace kiln {
namespace {

TEST(FirstSlurmHost, ExpandsTheFirstEntryOfAHostlist) {
  EXPECT_EQ(*first_slurm_host("vm"), "vm");
  EXPECT_EQ(*first_slurm_host("node[03-05,7],gpu1"), "node03");
  EXPECT_EQ(*first_slurm_host("gpu1,node[03-05]"), "gpu1");
  EXPECT_EQ(*first_slurm_host("rack[1-2]-n[4-5]"), "rack1-n4");
  EXPECT_EQ(*first_slurm_host("n[7,3]"), "n7");
}

TEST(FirstSlurmHost, RejectsMalformedLists) {
  EXPECT_EQ(first_slurm_host("").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(first_slurm_host("node[1-2").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(first_slurm_host("node1-2]").status().code(), Code::kInvalidArgument);
}

class SlurmEnv : public ::testing::Test {
 protected:
  void TearDown() override {
    for (const char* v : {"SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NODEID",
                          "SLURM_NNODES", "SLURM_STEP_NODELIST", "SLURM_JOB_ID", "SLURM_STEP_ID",
                          "SLURM_NTASKS_PER_NODE"}) {
      unsetenv(v);
    }
  }
};

TEST_F(SlurmEnv, OutsideAStepThereIsNone) {
  auto s = slurm_step_from_env();
  ASSERT_TRUE(s.is_ok());
  EXPECT_FALSE(s->has_value());
  setenv("SLURM_PROCID", "0", 1);  // sbatch's batch script, not an srun step
  EXPECT_FALSE(slurm_step_from_env()->has_value());
}

TEST_F(SlurmEnv, ReadsTheStep) {
  setenv("SLURM_PROCID", "3", 1);
  setenv("SLURM_NTASKS", "4", 1);
  setenv("SLURM_LOCALID", "1", 1);
  setenv("SLURM_NODEID", "1", 1);
  setenv("SLURM_NNODES", "2", 1);
  setenv("SLURM_STEP_NODELIST", "n[08-09]", 1);
  setenv("SLURM_JOB_ID", "77", 1);
  setenv("SLURM_STEP_ID", "0", 1);
  auto s = slurm_step_from_env();
  ASSERT_TRUE(s.is_ok()) << s.status().to_string();
  ASSERT_TRUE(s->has_value());
  const SlurmStep& step = **s;
  EXPECT_EQ(step.procid, 3);
  EXPECT_EQ(step.ntasks, 4);
  EXPECT_EQ(step.localid, 1);
  EXPECT_EQ(step.local_ntasks, 2);
  EXPECT_EQ(step.nodeid, 1);
  EXPECT_EQ(step.first_host, "n08");
  int port = step.derived_port();
  EXPECT_GE(port, 10000);
  EXPECT_LT(port, 30000);
  EXPECT_EQ(port, step.derived_port()) << "every task derives the same port";
  EXPECT_NE(port, step.derived_port(1));
}

TEST_F(SlurmEnv, AMalformedVariableIsNamed) {
  setenv("SLURM_PROCID", "x", 1);
  setenv("SLURM_STEP_ID", "0", 1);
  setenv("SLURM_STEP_NODELIST", "vm", 1);
  auto s = slurm_step_from_env();
  EXPECT_EQ(s.status().code(), Code::kInvalidArgument);
  EXPECT_NE(s.status().to_string().find("SLURM_PROCID"), std::string::npos);
}

}  // namespace
}  // namespace kiln
