#include "kiln/plan/step_time.h"

#include <gtest/gtest.h>

#include "kiln/plan/plan.h"
#include "kiln/plan/testing/published_models.h"

namespace kiln::plan {
namespace {

PlanConfig gpt_175b_on_a100() {
  PlanConfig c;
  auto& m = c.model;
  m.layers = 96;
  m.hidden = 12288;
  m.heads = 96;
  m.kv_heads = 96;
  m.ffn_hidden = 4 * 12288;
  m.seq_len = 2048;
  m.vocab = 51200;
  m.set_family_defaults();
  c.cluster.gpu = *find_gpu("a100-sxm-80g");
  c.cluster.nodes = 8;
  c.cluster.nvlink_bytes_per_s = c.cluster.gpu.nvlink_bytes_per_s;
  c.cluster.nic_bits_per_s = c.cluster.gpu.nic_bits_per_s;
  c.cluster.storage_write_bytes_per_s = 20e9;
  c.reliability.job_mtbf_s = 86400;
  c.layout.tp = 8;
  c.layout.pp = 8;
  c.layout.dp = 1;
  c.layout.global_batch = 64;
  c.layout.sequence_parallel = true;
  c.layout.recompute = Recompute::kSelective;
  c.layout.attention = AttentionKernel::kUnfused;
  return c;
}

TEST(StepTimeTest, ComponentsAddUpToTheStep) {
  for (int zero : {0, 3}) {
    PlanConfig c = gpt_175b_on_a100();
    c.cluster.nodes = 16;
    c.layout.dp = 2;
    c.layout.zero = zero;
    const StepTime st = step_time(c, EfficiencyModel::defaults());
    const double sum = st.compute_s + st.tp_comm_s + st.pp_comm_s + st.pp_bubble_s +
                       st.dp_exposed_s + st.optimizer_s;
    EXPECT_NEAR(sum, st.step_s, st.step_s * 1e-9) << "zero " << zero;
  }
}

TEST(StepTimeTest, BubbleFollowsTheSchedule) {
  PlanConfig c = gpt_175b_on_a100();
  const StepTime st = step_time(c, EfficiencyModel::defaults());
  // Equal stages except the last, which also runs the loss and paces the
  // pipeline: the other seven stages' fill and drain is the bubble.
  ASSERT_EQ(st.stage_times_s.size(), 8u);
  EXPECT_EQ(st.slowest_stage, 7);
  EXPECT_NEAR(st.pp_bubble_s, 7 * st.stage_times_s[0], 1e-9);
  EXPECT_NEAR(st.step_s - st.optimizer_s, st.micro_batches * st.stage_s + st.pp_bubble_s, 1e-9);
  c.layout.vpp = 2;
  const StepTime interleaved = step_time(c, EfficiencyModel::defaults());
  EXPECT_LT(interleaved.pp_bubble_s, st.pp_bubble_s * 0.55);
  EXPECT_GT(interleaved.pp_comm_s, st.pp_comm_s);  // v times the sends
}

TEST(StepTimeTest, TheSlowestStagePacesAnUnevenPipeline) {
  PlanConfig c = gpt_175b_on_a100();  // 96 layers on 8 stages
  const StepTime even = step_time(c, EfficiencyModel::defaults());
  // Move a layer from the first stage to the fourth: the fourth (13 layers)
  // now paces every micro-batch.
  c.layout.stage_layers = {11, 12, 12, 13, 12, 12, 12, 12};
  ASSERT_TRUE(check_layout(c).is_ok()) << check_layout(c).to_string();
  const StepTime skewed = step_time(c, EfficiencyModel::defaults());
  EXPECT_EQ(skewed.slowest_stage, 3);
  EXPECT_GT(skewed.step_s, even.step_s);
  double sum = 0;
  for (double t : skewed.stage_times_s) sum += t;
  EXPECT_NEAR(skewed.pp_bubble_s, sum - skewed.stage_s, 1e-9);
  EXPECT_NEAR(skewed.compute_s + skewed.tp_comm_s + skewed.pp_comm_s + skewed.pp_bubble_s +
                  skewed.dp_exposed_s + skewed.optimizer_s,
              skewed.step_s, skewed.step_s * 1e-9);
}

TEST(StepTimeTest, LayersNeedNotDivideTheStages) {
  PlanConfig c = gpt_175b_on_a100();
  c.model.layers = 94;  // 94 on 8 stages: the automatic split is 11 12 12 12 12 12 12 11
  ASSERT_TRUE(check_layout(c).is_ok()) << check_layout(c).to_string();
  const StepTime st = step_time(c, EfficiencyModel::defaults());
  EXPECT_EQ(st.stage_layers, (std::vector<std::int64_t>{11, 12, 12, 12, 12, 12, 12, 11}));
  EXPECT_GT(st.step_s, 0);
}

TEST(StepTimeTest, ZeroThreeLatencyGrowsWithTheGroup) {
  // 175B with ZeRO-3 and no model parallelism, one sequence per GPU: the
  // work per GPU is fixed, but every gather's ring has n - 1 steps.
  PlanConfig c = gpt_175b_on_a100();
  c.layout.tp = 1;
  c.layout.pp = 1;
  c.layout.zero = 3;
  c.layout.sequence_parallel = false;
  c.layout.recompute = Recompute::kFull;
  double previous = 0;
  for (std::int64_t gpus : {384, 768, 1536}) {
    c.cluster.nodes = gpus / 8;
    c.layout.dp = gpus;
    c.layout.global_batch = gpus;
    c.layout.zero3_gather = GatherUnit::kTensor;
    const StepTime per_tensor = step_time(c, EfficiencyModel::defaults());
    c.layout.zero3_gather = GatherUnit::kLayer;
    const StepTime per_layer = step_time(c, EfficiencyModel::defaults());
    EXPECT_GT(per_tensor.step_s, per_layer.step_s) << gpus;
    EXPECT_GT(per_tensor.step_s, previous) << gpus;
    EXPECT_GT(per_tensor.dp_exposed_s, 0.3 * per_tensor.step_s) << gpus;
    previous = per_tensor.step_s;
  }
}

// Llama 2 70B in FSDP (ZeRO-3 over every GPU), two sequences per GPU, on
// H100: the NVIDIA DGX Cloud MaxText recipe (examples/plan/runs, nvidia-dgxc2025).
PlanConfig llama70b_fsdp_on_h100(std::int64_t gpus) {
  PlanConfig c;
  c.model = testing::llama2_70b();
  c.cluster.gpu = *find_gpu("h100-sxm");
  c.cluster.nodes = gpus / 8;
  c.cluster.nvlink_bytes_per_s = c.cluster.gpu.nvlink_bytes_per_s;
  c.cluster.nic_bits_per_s = c.cluster.gpu.nic_bits_per_s;
  c.cluster.storage_write_bytes_per_s = 20e9;
  c.reliability.job_mtbf_s = 86400;
  c.layout.dp = gpus;
  c.layout.micro_batch = 2;
  c.layout.global_batch = 2 * gpus;
  c.layout.zero = 3;
  c.layout.recompute = Recompute::kFull;
  c.layout.mma = MmaIssue::kAsync;
  c.layout.zero3_param_bytes = 4;  // MaxText's fp32 weights
  return c;
}

TEST(StepTimeTest, AsynchronousMmaHidesTheOperandFeedOnHopper) {
  PlanConfig c = llama70b_fsdp_on_h100(64);
  const LayerTime async = layer_time(c, EfficiencyModel::defaults());
  c.layout.mma = MmaIssue::kSync;
  const LayerTime sync = layer_time(c, EfficiencyModel::defaults());
  // The weight GEMMs: ~64% of peak when the feed and the MMAs take turns,
  // ~80% when the feed runs under them.
  EXPECT_LT(sync.gemm_efficiency, 0.68);
  EXPECT_GT(async.gemm_efficiency, 0.76);
  EXPECT_LT(async.gemm_efficiency, EfficiencyModel::defaults().gemm_peak_fraction);
  // FlashAttention's exponentials run under its MMAs too.
  EXPECT_LT(async.attention_fwd_s, sync.attention_fwd_s);
  EXPECT_LT(async.forward_s, 0.85 * sync.forward_s);
}

TEST(StepTimeTest, SaveQkvRecomputesEverythingButTheProjections) {
  PlanConfig c = llama70b_fsdp_on_h100(64);
  const LayerTime full = layer_time(c, EfficiencyModel::defaults());
  const double full_flops = step_flops(c.model, c.layout).hardware;
  c.layout.recompute = Recompute::kSaveQkv;
  const LayerTime save_qkv = layer_time(c, EfficiencyModel::defaults());
  const double save_qkv_flops = step_flops(c.model, c.layout).hardware;
  c.layout.recompute = Recompute::kSelective;
  const LayerTime selective = layer_time(c, EfficiencyModel::defaults());
  EXPECT_LT(save_qkv.recompute_s, full.recompute_s);
  EXPECT_GT(save_qkv.recompute_s, 0.8 * full.recompute_s);
  EXPECT_GT(save_qkv.recompute_s, selective.recompute_s);
  // The Q, K, V projections: 2·h·(h + 2·kv_dim) FLOPs per token per layer.
  const double tokens = static_cast<double>(c.layout.global_batch * c.model.seq_len);
  EXPECT_NEAR(full_flops - save_qkv_flops, tokens * 80 * 2 * 8192.0 * (8192 + 2 * 1024),
              1e-6 * full_flops);
}

TEST(StepTimeTest, HybridShardingGathersWithinTheGroupAndReducesAcrossReplicas) {
  // FSDP over 128 GPUs x 8 replicas against FSDP over all 1,024.
  PlanConfig flat = llama70b_fsdp_on_h100(1024);
  PlanConfig hybrid = flat;
  hybrid.layout.zero3_shard_group = 128;
  const auto& e = EfficiencyModel::defaults();
  const StepTime f = step_time(flat, e), hy = step_time(hybrid, e);
  // Gathers and reduce-scatters over 127 ring steps instead of 1,023...
  EXPECT_LT(hy.dp.time_s, f.dp.time_s);
  // ...plus the replicas' all-reduce of each GPU's 1/128 gradient shard.
  PlanConfig group_only = llama70b_fsdp_on_h100(128);
  const StepTime g = step_time(group_only, e);
  const ParamCount pc = count_params(flat.model);
  const double shard_bytes = 4.0 * (pc.attention + pc.ffn + pc.norms) / 128;
  EXPECT_NEAR(hy.dp.bytes_per_gpu - g.dp.bytes_per_gpu, 80 * 2 * shard_bytes * 7 / 8,
              1e-6 * hy.dp.bytes_per_gpu);
  EXPECT_GT(hy.dp.time_s, g.dp.time_s);
  // Each GPU holds 1/128 of the model states, not 1/1,024.
  const MemoryBreakdown mf = memory_per_gpu(flat), mh = memory_per_gpu(hybrid);
  EXPECT_NEAR(mh.weights, 8 * mf.weights, 1e-6 * mh.weights);
  EXPECT_NEAR(mh.optimizer, 8 * mf.optimizer, 1e-6 * mh.optimizer);
}

TEST(StepTimeTest, OverlappedTensorParallelCommIsMostlyHidden) {
  PlanConfig c = gpt_175b_on_a100();
  const StepTime exposed = step_time(c, EfficiencyModel::defaults());
  c.layout.tp_comm_overlap = true;
  const StepTime hidden = step_time(c, EfficiencyModel::defaults());
  EXPECT_NEAR(hidden.layer.tp_comm_s, exposed.layer.tp_comm_s, 1e-12);
  // The GEMMs of a 175B layer cover its collectives: only the interference remains.
  EXPECT_NEAR(hidden.tp_comm_s,
              EfficiencyModel::defaults().overlap_interference * exposed.tp_comm_s, 1e-9);
  EXPECT_LT(hidden.step_s, exposed.step_s);
}

TEST(StepTimeTest, RecomputeCostsTime) {
  PlanConfig c = gpt_175b_on_a100();
  c.layout.recompute = Recompute::kNone;
  const double none = step_time(c, EfficiencyModel::defaults()).step_s;
  c.layout.recompute = Recompute::kSelective;
  const double selective = step_time(c, EfficiencyModel::defaults()).step_s;
  c.layout.recompute = Recompute::kFull;
  const double full = step_time(c, EfficiencyModel::defaults()).step_s;
  EXPECT_LT(none, selective);
  EXPECT_LT(selective, full);
  // Full recompute adds about a third (one more forward of three passes).
  EXPECT_NEAR(full / none, 1.3, 0.08);
  EXPECT_LT(selective / none, 1.06);
}

TEST(StepTimeTest, GemmEfficiencyGrowsWithSize) {
  const GpuSpec a100 = *find_gpu("a100-sxm-80g");
  const auto& e = EfficiencyModel::defaults();
  const double small = gemm_efficiency(a100, e, MmaIssue::kSync, 512, 512, 512);
  const double mid = gemm_efficiency(a100, e, MmaIssue::kSync, 2048, 2304, 9216);
  const double big = gemm_efficiency(a100, e, MmaIssue::kSync, 8192, 8192, 8192);
  EXPECT_LT(small, mid);
  EXPECT_LT(mid, big);
  EXPECT_LT(big, e.gemm_peak_fraction);
  EXPECT_GT(big, 0.65);
  // Hopper doubled the MMA rate per SM but not shared memory: the same GEMM
  // reaches a smaller fraction of a larger peak.
  const GpuSpec h100 = *find_gpu("h100-sxm");
  EXPECT_LT(gemm_efficiency(h100, e, MmaIssue::kSync, 8192, 8192, 8192), big - 0.05);
  // Unless its MMAs read shared memory asynchronously (wgmma): then the
  // feed runs under the MMAs and the same GEMM gains a fifth or more.
  EXPECT_GT(gemm_efficiency(h100, e, MmaIssue::kAsync, 8192, 8192, 8192),
            1.2 * gemm_efficiency(h100, e, MmaIssue::kSync, 8192, 8192, 8192));
  // Thin attention-score GEMMs (K = head dim) are far from peak.
  EXPECT_LT(gemm_efficiency(a100, e, MmaIssue::kSync, 2048, 2048, 64), 0.5);
}

TEST(StepTimeTest, ZeroThreeMovesMoreDataParallelBytes) {
  PlanConfig c = gpt_175b_on_a100();
  c.cluster.nodes = 32;
  c.layout.pp = 4;
  c.layout.dp = 8;
  c.layout.zero = 1;
  const StepTime z1 = step_time(c, EfficiencyModel::defaults());
  c.layout.zero = 3;
  const StepTime z3 = step_time(c, EfficiencyModel::defaults());
  EXPECT_GT(z3.dp.bytes_per_gpu, 2 * z1.dp.bytes_per_gpu);
  EXPECT_GE(z3.step_s, z1.step_s);
}

TEST(StepTimeTest, SelectiveRecomputeRunsOfKorthikanti2022) {
  // Out-of-sample check against Korthikanti et al. 2022 Table 5 (selective
  // recompute + sequence parallelism on A100): 175B on 64 GPUs, 13.75 s; 530B
  // on 280 GPUs, 37.83 s; 1T on 512 GPUs, 71.49 s.
  struct Run {
    std::int64_t layers, hidden, heads, pp, gpus;
    double measured_s;
  };
  for (const Run& r : {Run{96, 12288, 96, 8, 64, 13.75}, Run{105, 20480, 128, 35, 280, 37.83},
                       Run{128, 25600, 160, 64, 512, 71.49}}) {
    PlanConfig c = gpt_175b_on_a100();
    c.model.layers = r.layers;
    c.model.hidden = r.hidden;
    c.model.heads = r.heads;
    c.model.kv_heads = r.heads;
    c.model.ffn_hidden = 4 * r.hidden;
    c.cluster.nodes = r.gpus / 8;
    c.layout.pp = r.pp;
    c.layout.global_batch = r.gpus;
    auto p = make_plan(c);
    ASSERT_TRUE(p.is_ok()) << p.status().to_string();
    EXPECT_NEAR(p->step.step_s / r.measured_s, 1.0, 0.15) << r.layers << " layers";
  }
}

}  // namespace
}  // namespace kiln::plan
