#include "kiln/plan/memory.h"

#include <gtest/gtest.h>

namespace kiln::plan {
namespace {

// GPT-3 175B shape, the setting of Korthikanti et al. 2022 Table 2.
ModelSpec gpt() {
  ModelSpec m;
  m.layers = 96;
  m.hidden = 12288;
  m.heads = 96;
  m.kv_heads = 96;
  m.ffn_hidden = 4 * 12288;
  m.seq_len = 2048;
  m.vocab = 51200;
  m.set_family_defaults();
  return m;
}

LayoutSpec layout(std::int64_t t, bool sp, Recompute r) {
  LayoutSpec l;
  l.tp = t;
  l.micro_batch = 1;
  l.sequence_parallel = sp;
  l.recompute = r;
  l.attention = AttentionKernel::kUnfused;
  return l;
}

constexpr double s = 2048, b = 1, h = 12288, a = 96, t = 8;
constexpr double sbh = s * b * h;

TEST(MemoryTest, ActivationsNoParallelism) {
  EXPECT_DOUBLE_EQ(activation_bytes_per_layer(gpt(), layout(1, false, Recompute::kNone)),
                   sbh * (34 + 5 * a * s / h));
}

TEST(MemoryTest, ActivationsTensorParallel) {
  EXPECT_DOUBLE_EQ(activation_bytes_per_layer(gpt(), layout(8, false, Recompute::kNone)),
                   sbh * (10 + 24 / t + 5 * a * s / (h * t)));
}

TEST(MemoryTest, ActivationsTensorAndSequenceParallel) {
  EXPECT_DOUBLE_EQ(activation_bytes_per_layer(gpt(), layout(8, true, Recompute::kNone)),
                   sbh / t * (34 + 5 * a * s / h));
}

TEST(MemoryTest, ActivationsSelectiveRecompute) {
  EXPECT_DOUBLE_EQ(activation_bytes_per_layer(gpt(), layout(8, true, Recompute::kSelective)),
                   sbh * 34 / t);
  EXPECT_DOUBLE_EQ(activation_bytes_per_layer(gpt(), layout(8, false, Recompute::kSelective)),
                   sbh * (10 + 24 / t));
}

TEST(MemoryTest, ActivationsFullRecompute) {
  EXPECT_DOUBLE_EQ(activation_bytes_per_layer(gpt(), layout(8, false, Recompute::kFull)), 2 * sbh);
  EXPECT_DOUBLE_EQ(activation_bytes_per_layer(gpt(), layout(8, true, Recompute::kFull)),
                   2 * sbh / t);
}

TEST(MemoryTest, ActivationsSaveQkvKeepsTheProjections) {
  // The layer input and Q, K, V (3·s·b·h bf16 for multi-head attention), split over TP.
  EXPECT_DOUBLE_EQ(activation_bytes_per_layer(gpt(), layout(8, true, Recompute::kSaveQkv)),
                   2 * sbh / t + 6 * sbh / t);
}

TEST(MemoryTest, FlashAttentionDropsTheQuadraticTerm) {
  LayoutSpec l = layout(8, true, Recompute::kNone);
  l.attention = AttentionKernel::kFlash;
  EXPECT_NEAR(activation_bytes_per_layer(gpt(), l), sbh * 34 / t, sbh * 0.01);
}

TEST(MemoryTest, InFlightMicroBatches) {
  LayoutSpec l;
  l.pp = 4;
  l.dp = 1;
  l.global_batch = 64;
  EXPECT_DOUBLE_EQ(micro_batches_in_flight(l), 4);
  l.vpp = 2;
  EXPECT_DOUBLE_EQ(micro_batches_in_flight(l), 4 * (1 + 3.0 / 8));
  l.pp = 1;
  l.vpp = 1;
  EXPECT_DOUBLE_EQ(micro_batches_in_flight(l), 1);
}

TEST(MemoryTest, ZeroStagesShardModelStates) {
  PlanConfig c;
  c.model = gpt();
  c.cluster.gpu = *find_gpu("a100-sxm-80g");
  c.cluster.nodes = 8;
  c.layout.tp = 8;
  c.layout.pp = 1;
  c.layout.dp = 8;
  c.layout.global_batch = 64;
  const MemoryBreakdown z0 = memory_per_gpu(c);
  // 16 bytes per parameter without sharding.
  EXPECT_NEAR((z0.weights + z0.gradients + z0.optimizer) / (z0.weights / 2), 16, 1e-9);
  c.layout.zero = 1;
  const MemoryBreakdown z1 = memory_per_gpu(c);
  EXPECT_DOUBLE_EQ(z1.optimizer, z0.optimizer / 8);
  EXPECT_DOUBLE_EQ(z1.gradients, z0.gradients);
  c.layout.zero = 2;
  EXPECT_DOUBLE_EQ(memory_per_gpu(c).gradients, z0.gradients / 8);
  c.layout.zero = 3;
  const MemoryBreakdown z3 = memory_per_gpu(c);
  EXPECT_DOUBLE_EQ(z3.weights, z0.weights / 8);
  EXPECT_LT(z3.total, z0.total);
  // 175B on 64 A100-80G without sharding cannot fit: 16 B × 174.6 B / 8 = 349 GB.
  EXPECT_FALSE(z0.fits);
}

}  // namespace
}  // namespace kiln::plan
