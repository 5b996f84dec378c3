#include "kiln/plan/host_step_time.h"

#include <gtest/gtest.h>

#include <cmath>

#include "kiln/comm/tuning.h"
#include "kiln/plan/flops.h"

namespace kiln::plan {
namespace {

// A host where only FLOPs cost time: products at 100 GFLOP/s on every
// thread count, everything else free. Then a step's time is the model's
// FLOPs over the host's aggregate rate, whatever the layout: a case that can
// be computed by hand (flops.h gives the FLOPs).
std::shared_ptr<HostProfile> flops_only_host(int cores) {
  auto p = std::make_shared<HostProfile>();
  p->cores = cores;
  p->memory_bytes = 1e12;
  for (auto [rates, threads] : {std::pair{&p->one_thread, 1}, std::pair{&p->all_threads, cores}}) {
    const double rate = 100e9 * threads;
    rates->threads = threads;
    // Backward does twice the forward's FLOPs, priced per forward FLOP.
    rates->linear_fwd = {0, rate, 0};
    rates->linear_bwd = {0, rate / 2, 0};
    rates->attention_fwd = {0, rate, 0};
    rates->attention_bwd = {0, rate / 2, 0};
  }
  p->stream_bytes_per_s = 1e30;
  p->stream_all_bytes_per_s = 1e30;
  p->shm = {0, 1e30};
  p->tcp = {0, 1e30};
  return p;
}

// kiln's small GPT (examples/train/gpt_3d.toml): 4 layers, hidden 128, 4
// heads, seq 128, byte vocabulary, rotary positions, untied head, no dropout.
PlanConfig small_gpt(std::shared_ptr<HostProfile> host, int tp, int pp, int dp, int m) {
  PlanConfig c;
  c.source = "test";
  auto& mo = c.model;
  mo.layers = 4;
  mo.hidden = 128;
  mo.heads = 4;
  mo.kv_heads = 4;
  mo.ffn_hidden = 512;
  mo.seq_len = 128;
  mo.vocab = 256;
  mo.learned_positions = false;
  mo.tied_embeddings = false;
  mo.dropout = false;
  c.layout.tp = tp;
  c.layout.pp = pp;
  c.layout.dp = dp;
  c.layout.global_batch = 32;
  c.layout.micro_batch = 32 / (dp * m);
  c.cluster.host = std::move(host);
  c.cluster.nodes = 1;
  c.cluster.gpus_per_node = tp * pp * dp;
  return c;
}

double model_flops(const PlanConfig& c) { return step_flops(c.model, c.layout).model; }

TEST(HostStepTimeTest, OneRankTakesTheModelsFlopsOverTheRate) {
  const PlanConfig c = small_gpt(flops_only_host(1), 1, 1, 1, 4);
  auto st = host_step_time(c);
  ASSERT_TRUE(st.is_ok()) << st.status().to_string();
  // 3 × 32·128 tokens × (4·(24·128² + 4·128·128) + 2·256·128) = 23.3 GFLOP.
  EXPECT_NEAR(model_flops(c), 3.0 * 32 * 128 * (4 * (24.0 * 128 * 128 + 4.0 * 128 * 128) + 2.0 * 256 * 128), 1);
  EXPECT_NEAR(st->step_s, model_flops(c) / 100e9, 1e-9);
  EXPECT_NEAR(st->compute_s, st->step_s, 1e-9);
  EXPECT_EQ(st->pp_bubble_s, 0);
  EXPECT_EQ(st->dp_comm_s, 0);
}

TEST(HostStepTimeTest, TheHostsAggregateRateSetsEveryLayoutWhenNothingElseCosts) {
  // 2 cores: a rank per core, or 8 ranks on 2 cores (each at a quarter
  // speed): always the FLOPs over 2 × 100 GFLOP/s. One rank alone uses both
  // cores' threads (kiln train's default).
  const double want = model_flops(small_gpt(flops_only_host(2), 1, 1, 1, 4)) / 200e9;
  for (auto [tp, dp] : {std::pair{1, 1}, std::pair{2, 1}, std::pair{1, 2}, std::pair{2, 2},
                        std::pair{1, 8}, std::pair{2, 4}}) {
    auto st = host_step_time(small_gpt(flops_only_host(2), tp, 1, dp, 4));
    ASSERT_TRUE(st.is_ok()) << st.status().to_string();
    EXPECT_NEAR(st->step_s, want, 1e-9 * want) << "tp " << tp << " dp " << dp;
    EXPECT_NEAR(st->oversubscription, std::max(1, tp * dp / 2), 1e-12);
  }
}

TEST(HostStepTimeTest, DedicatedCoresPayTheOneF1BBubble) {
  // PP 2 on 2 cores, one rank each: the dedicated-device regime. The
  // breakdown adds up, the bubble is there, and the step is at least the
  // slowest stage's m micro-batches.
  auto st = host_step_time(small_gpt(flops_only_host(2), 1, 2, 1, 4));
  ASSERT_TRUE(st.is_ok()) << st.status().to_string();
  const double sum = st->compute_s + st->tp_comm_s + st->pp_comm_s + st->handoff_s +
                     st->pp_bubble_s + st->dp_comm_s + st->optimizer_s;
  EXPECT_NEAR(sum, st->step_s, 1e-12);
  EXPECT_GT(st->pp_bubble_s, 0);
  EXPECT_NEAR(st->bubble_formula, 1.0 / 4, 1e-12);
  const double slow = st->stage_forward_s[1] + st->stage_backward_s[1];  // the head's stage
  EXPECT_EQ(st->slowest_stage, 1);
  EXPECT_GE(st->step_s, 4 * slow);
  // With both stages equal the 1F1B bubble would be exactly (p − 1)/m of
  // the ideal; with a lighter first stage it is smaller.
  EXPECT_LE(st->bubble_fraction, 1.0 / 4 + 1e-9);
}

TEST(HostStepTimeTest, CommunicationIsPricedByTheLinksAlphaBeta) {
  auto host = flops_only_host(2);
  host->shm = {1e-3, 1e9};  // 1 ms per ring step, 1 GB/s: easy to see
  const PlanConfig c = small_gpt(host, 1, 1, 2, 4);
  auto st = host_step_time(c);
  ASSERT_TRUE(st.is_ok());
  // DP 2 on 2 cores: the whole model's fp32 gradients, one ring all-reduce.
  const double params = count_params(c.model).total;
  EXPECT_NEAR(st->dp_comm_s, comm::ring_allreduce_s(4 * params, 2, {1e-3, 1e9}), 1e-12);
  // The optimizer waits for the global gradient norm: one tiny all-reduce.
  EXPECT_NEAR(st->optimizer_s, comm::ring_allreduce_s(8, 2, {1e-3, 1e9}), 1e-9);

  // TP 2: four activation all-reduces per layer per micro-batch, plus the
  // embedding's, the loss's two (a max, then the sum and the target logit
  // together) and the head's input gradient.
  const PlanConfig t = small_gpt(host, 2, 1, 1, 4);
  auto tt = host_step_time(t);
  ASSERT_TRUE(tt.is_ok());
  const double act = 4.0 * 8 * 128 * 128;  // fp32, micro-batch of 8 sequences
  const double per_mb = 4 * 4 * comm::ring_allreduce_s(act, 2, {1e-3, 1e9}) +
                        2 * comm::ring_allreduce_s(act, 2, {1e-3, 1e9}) +
                        comm::ring_allreduce_s(4.0 * 8 * 128, 2, {1e-3, 1e9}) +
                        comm::ring_allreduce_s(2 * 4.0 * 8 * 128, 2, {1e-3, 1e9});
  EXPECT_NEAR(tt->tp_comm_s, 4 * per_mb, 1e-9);
}

TEST(HostStepTimeTest, ElementwiseClassesAddUpPerLayer) {
  auto host = flops_only_host(1);
  host->one_thread.linear_fwd.flops = host->one_thread.linear_bwd.flops = 1e30;
  host->one_thread.attention_fwd.flops = host->one_thread.attention_bwd.flops = 1e30;
  host->one_thread.gelu_fwd = {1e-6, 1e-9};
  host->one_thread.layer_norm_bwd = {2e-6, 3e-9};
  host->one_thread.rotary_fwd = {0, 5e-9};
  const PlanConfig c = small_gpt(host, 1, 1, 1, 1);  // one micro-batch of 32 sequences
  auto st = host_step_time(c);
  ASSERT_TRUE(st.is_ok());
  const double tokens = 32 * 128;
  // GeLU on the 512-wide FFN; rotary on q and k (128 wide each).
  EXPECT_NEAR(st->layer.forward_s, 1e-6 + tokens * 512 * 1e-9 + 2 * tokens * 128 * 5e-9, 1e-12);
  // Two LayerNorms backward on the 128-wide stream.
  EXPECT_NEAR(st->layer.backward_s, 2 * (2e-6 + tokens * 128 * 3e-9), 1e-12);
}

TEST(HostStepTimeTest, CoreSharingSlowsComputeAndEachBlockingMessageWaitsItsHandOff) {
  // Note [Core sharing]: compute 1.5x its fair share and 1 ms per blocking
  // message at every ranks-per-core level; comm otherwise free.
  auto host = flops_only_host(2);
  host->sharing = {{1, 1.5, 1e-3}, {4, 1.5, 1e-3}};
  const double fair = model_flops(small_gpt(flops_only_host(2), 1, 1, 1, 4)) / 200e9;

  // One rank shares with no one: unchanged.
  auto alone = host_step_time(small_gpt(host, 1, 1, 1, 4));
  ASSERT_TRUE(alone.is_ok());
  EXPECT_NEAR(alone->step_s, model_flops(small_gpt(host, 1, 1, 1, 4)) / 200e9, 1e-9 * fair);
  EXPECT_EQ(alone->handoff_s, 0);

  // TP 2 × DP 4: 8 ranks on 2 cores, one stage. Per micro-batch a TP rank
  // blocks on 2 all-reduces per layer each way (16), the embedding's (1),
  // the loss's 2 forward and the head's 1 backward: 20, one exchange round each (a
  // pair); 4 micro-batches. Then the DP all-reduce over 4 (2 rounds) and the
  // clipping norm and the loss over all 8 ranks (3 rounds each).
  auto st = host_step_time(small_gpt(host, 2, 1, 4, 4));
  ASSERT_TRUE(st.is_ok()) << st.status().to_string();
  EXPECT_NEAR(st->sharing_slowdown, 1.5, 1e-12);
  EXPECT_NEAR(st->handoff_per_message_s, 1e-3, 1e-15);
  EXPECT_NEAR(st->handoff_s, 4 * 20 * 1e-3, 1e-9);
  EXPECT_NEAR(st->dp_comm_s, 2 * 1e-3, 1e-9);
  EXPECT_NEAR(st->optimizer_s, 2 * 3 * 1e-3, 1e-9);
  EXPECT_NEAR(st->step_s, 1.5 * fair + (80 + 2 + 6) * 1e-3, 1e-6 * fair);
  const double sum = st->compute_s + st->tp_comm_s + st->pp_comm_s + st->handoff_s +
                     st->pp_bubble_s + st->dp_comm_s + st->optimizer_s;
  EXPECT_NEAR(sum, st->step_s, 1e-12);

  // A pipeline's receivers wait a hand-off too: PP 2 × DP 2 takes longer
  // than the same layout with free hand-offs, by at least the first
  // micro-batch's crossing in each direction.
  host->sharing = {{1, 1.0, 0}, {4, 1.0, 0}};
  auto free_handoffs = host_step_time(small_gpt(host, 1, 2, 2, 4));
  host->sharing = {{1, 1.0, 1e-3}, {4, 1.0, 1e-3}};
  auto paid = host_step_time(small_gpt(host, 1, 2, 2, 4));
  ASSERT_TRUE(free_handoffs.is_ok() && paid.is_ok());
  EXPECT_GE(paid->step_s - free_handoffs->step_s, 2 * 1e-3);
}

TEST(HostStepTimeTest, OnlyTensorParallelRanksPayTheLockstepSlowdown) {
  // Note [Lockstep partners]: pairs meeting every unit of work 1.5x, ranks
  // that meet no partner 1.2x; no hand-offs, comm free.
  auto host = flops_only_host(2);
  host->sharing = {{1, 1.5, 0, 1.2}, {4, 1.5, 0, 1.2}};
  const double fair = model_flops(small_gpt(flops_only_host(2), 1, 1, 1, 4)) / 200e9;
  // TP 2 x DP 4: the pairs' slowdown.
  auto tp = host_step_time(small_gpt(host, 2, 1, 4, 4));
  ASSERT_TRUE(tp.is_ok()) << tp.status().to_string();
  EXPECT_NEAR(tp->sharing_slowdown, 1.5, 1e-12);
  EXPECT_NEAR(tp->step_s, 1.5 * fair, 1e-6 * fair);
  // DP 8 and PP 2 x DP 4 (8 ranks, no bubble left on 2 cores): independent.
  for (const auto& [pp, dp] : {std::pair{1, 8}, std::pair{2, 4}}) {
    auto st = host_step_time(small_gpt(host, 1, pp, dp, 4));
    ASSERT_TRUE(st.is_ok()) << st.status().to_string();
    EXPECT_NEAR(st->sharing_slowdown, 1.2, 1e-12) << "pp " << pp;
    EXPECT_NEAR(st->compute_s, 1.2 * fair, 0.05 * fair) << "pp " << pp;
  }
  // A profile without the independent measurement prices every layout as the pairs.
  host->sharing = {{1, 1.5, 0}, {4, 1.5, 0}};
  auto old = host_step_time(small_gpt(host, 1, 1, 8, 4));
  ASSERT_TRUE(old.is_ok());
  EXPECT_NEAR(old->sharing_slowdown, 1.5, 1e-12);
}

TEST(HostStepTimeTest, TensorParallelRanksPayThePairsSlowdownAtTheirLayerHalf) {
  // Note [Work between meetings]: the pairs lose 1.6x at 0.1 ms between
  // meetings and 1.2x from 10 ms on; a TP rank's layer half lies in between.
  auto host = flops_only_host(2);
  host->sharing = {{1, 1.5, 0, 1.3}, {4, 1.5, 0, 1.3}};
  host->sharing[0].by_work = {{0.1e-3, 1.6}, {10e-3, 1.2}};
  host->sharing[1].by_work = host->sharing[0].by_work;
  auto tp = host_step_time(small_gpt(host, 2, 1, 1, 4));
  ASSERT_TRUE(tp.is_ok()) << tp.status().to_string();
  const double half = (tp->layer.forward_s + tp->layer.backward_s) / 4;
  EXPECT_NEAR(tp->tp_work_between_messages_s, half, 1e-15);
  ASSERT_GT(half, 0.1e-3);
  ASSERT_LT(half, 10e-3);
  const double expected = 1.6 - 0.4 * std::log(half / 0.1e-3) / std::log(100.0);
  EXPECT_NEAR(tp->sharing_slowdown, expected, 1e-12);
  const double fair = model_flops(small_gpt(flops_only_host(2), 1, 1, 1, 4)) / 200e9;
  EXPECT_NEAR(tp->step_s, expected * fair, 1e-6 * fair);
  // Halving the batch halves the work between meetings: a larger slowdown.
  PlanConfig smaller = small_gpt(host, 2, 1, 1, 4);
  smaller.layout.global_batch = 16;
  smaller.layout.micro_batch = 4;
  auto tp_small = host_step_time(smaller);
  ASSERT_TRUE(tp_small.is_ok());
  EXPECT_GT(tp_small->sharing_slowdown, tp->sharing_slowdown);
  // Ranks without a partner keep the independent slowdown, whatever the table.
  auto dp = host_step_time(small_gpt(host, 1, 1, 2, 4));
  ASSERT_TRUE(dp.is_ok());
  EXPECT_NEAR(dp->sharing_slowdown, 1.3, 1e-12);
  EXPECT_EQ(dp->tp_work_between_messages_s, 0);
}

TEST(HostStepTimeTest, TensorCollectivesInsideAPipelineWaitTheLockstepHandOff) {
  // Note [Pipeline hand-off]: a TP collective inside a pipeline stage waits
  // the lockstep hand-off of [core_sharing], as one without a pipeline.
  auto host = flops_only_host(2);
  host->sharing = {{1, 1.0, 1e-3}, {4, 1.0, 1e-3}};
  auto flat = host_step_time(small_gpt(host, 2, 1, 4, 4));
  ASSERT_TRUE(flat.is_ok()) << flat.status().to_string();
  EXPECT_NEAR(flat->handoff_s, 4 * 20 * 1e-3, 1e-9);
  auto piped = host_step_time(small_gpt(host, 2, 2, 2, 4));
  ASSERT_TRUE(piped.is_ok()) << piped.status().to_string();
  EXPECT_NEAR(piped->handoff_per_message_s, 1e-3, 1e-15);
  // TP 2 x PP 2 x DP 2 with every hand-off 2 ms longer: stage 0 (2 layers)
  // blocks on 2 x 2 + 1 TP messages forward and 4 backward per micro-batch,
  // 36 per step, each on the step's path at least in part.
  host->sharing = {{1, 1.0, 3e-3}, {4, 1.0, 3e-3}};
  auto slower = host_step_time(small_gpt(host, 2, 2, 2, 4));
  ASSERT_TRUE(slower.is_ok());
  EXPECT_GE(slower->step_s - piped->step_s, 36 * 2e-3 * 0.5);
  EXPECT_GT(slower->handoff_s, piped->handoff_s + 36 * 2e-3 * 0.5);
}

TEST(HostStepTimeTest, CountsTheBytesEachStageSendsPerStep) {
  // 4 micro-batches of 8 sequences x 128 tokens x 128 wide, fp32: 512 KiB
  // per crossing. The first stage sends activations only, the last
  // gradients only, the middle ones both; DP halves each replica's batch.
  auto st = host_step_time(small_gpt(flops_only_host(2), 1, 4, 1, 4));
  ASSERT_TRUE(st.is_ok()) << st.status().to_string();
  const double crossing = 8 * 128 * 128 * 4;
  EXPECT_EQ(st->stage_p2p_bytes,
            (std::vector<double>{4 * crossing, 8 * crossing, 8 * crossing, 4 * crossing}));
  auto replicas = host_step_time(small_gpt(flops_only_host(2), 1, 2, 2, 4));
  ASSERT_TRUE(replicas.is_ok());
  EXPECT_EQ(replicas->stage_p2p_bytes, (std::vector<double>{2 * crossing, 2 * crossing}));
}

TEST(HostStepTimeTest, NeedsAHostProfile) {
  PlanConfig c = small_gpt(flops_only_host(1), 1, 1, 1, 4);
  c.cluster.host.reset();
  EXPECT_EQ(host_step_time(c).status().code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace kiln::plan
