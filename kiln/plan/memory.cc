#include "kiln/plan/memory.h"

#include <algorithm>

#include "kiln/plan/flops.h"
#include "kiln/plan/stages.h"

namespace kiln::plan {

namespace {
// CUDA context, cuBLAS and NCCL workspaces, allocator slack.
constexpr double kWorkspaceBytes = 2e9;
// Gradient-reduction buckets (two in flight, fp32) of 40 M elements each.
constexpr double kBucketElements = 40e6;
}  // namespace

double activation_bytes_per_layer(const ModelSpec& m, const LayoutSpec& l) {
  const double s = static_cast<double>(m.seq_len);
  const double b = static_cast<double>(l.micro_batch);
  const double h = static_cast<double>(m.hidden);
  const double a = static_cast<double>(m.heads);
  const double kvd = static_cast<double>(m.kv_dim());
  const double f = static_cast<double>(m.ffn_hidden);
  const double t = static_cast<double>(l.tp);
  const double sbh = s * b * h;
  const double drop = m.dropout ? 1.0 : 0.0;

  if (l.recompute == Recompute::kFull) {
    // Only each layer's input is kept.
    return 2 * sbh / (l.sequence_parallel ? t : 1.0);
  }
  if (l.recompute == Recompute::kSaveQkv) {
    // The layer's input and the Q, K, V projections (split over TP ranks).
    return 2 * sbh / (l.sequence_parallel ? t : 1.0) + 2 * s * b * (h + 2 * kvd) / t;
  }
  // Parts every TP rank keeps whole unless the sequence is split (SP): both
  // norms' inputs (4sbh), the QKV and FFN GEMM inputs (2sbh each) and the two
  // dropout masks (sbh each).
  const double replicated = 4 * sbh + 2 * sbh + 2 * sbh + 2 * drop * sbh;
  // Parts split over TP ranks: Q and K (2sbh + 2sb·kvd), V (2sb·kvd), the
  // output projection's input (2sbh), the FFN activation's inputs (2sbf, or
  // 4sbf gate+up when gated) and the down projection's input (2sbf).
  double split = 2 * sbh + 4 * s * b * kvd + 2 * sbh + (m.glu ? 6 : 4) * s * b * f;
  // Attention scores: softmax output (2as²b), dropout mask (as²b) and output
  // (2as²b). FlashAttention keeps an fp32 log-sum-exp per row instead.
  if (l.recompute == Recompute::kNone) {
    if (l.attention == AttentionKernel::kUnfused) {
      split += (2 + 3 * drop) * a * s * s * b;
    } else {
      split += 4 * a * s * b;
    }
  }
  if (l.sequence_parallel) return (replicated + split) / t;
  return replicated + split / t;
}

double micro_batches_in_flight(const LayoutSpec& l) {
  if (l.pp == 1) return 1;
  const double p = static_cast<double>(l.pp);
  const double v = static_cast<double>(l.vpp);
  const double in_flight = l.vpp > 1 ? p * (1 + (p - 1) / (p * v)) : p;
  return std::min(in_flight, static_cast<double>(l.micro_batches()));
}

MemoryBreakdown memory_per_gpu(const PlanConfig& c) {
  const auto& m = c.model;
  const auto& l = c.layout;
  const double dp = static_cast<double>(l.dp);
  const double t = static_cast<double>(l.tp);
  const double params = stage_params_per_gpu(c, 0);
  MemoryBreakdown mem;
  // Hybrid sharding keeps ZeRO-3's model states sharded over its group only.
  const double shards = l.zero >= 3 ? static_cast<double>(l.zero3_shards()) : dp;
  mem.weights = 2 * params / (l.zero >= 3 ? shards : 1.0);
  mem.gradients = 2 * params / (l.zero >= 2 ? shards : 1.0);
  mem.optimizer = 12 * params / (l.zero >= 1 ? shards : 1.0);

  // Stage 0 holds the most micro-batches in flight.
  const double layers = static_cast<double>(stage_layers(c)[0]);
  const double sbh = static_cast<double>(m.seq_len * l.micro_batch * m.hidden);
  double act = activation_bytes_per_layer(m, l) * layers;
  // Embedding dropout mask (Korthikanti eq. 5's s·b·h·p/t term).
  if (m.dropout) act += sbh / (l.sequence_parallel ? t : 1.0);
  act *= micro_batches_in_flight(l);
  mem.activations = act;

  double buffers = kWorkspaceBytes;
  if (l.zero >= 3) {
    // The layer being computed and the one prefetched, gathered in the
    // sharded parameters' precision (bf16, or fp32 under autocast).
    const ParamCount p = count_params(m);
    buffers += 2 * l.zero3_param_bytes * (p.attention + p.ffn) / t;
  } else if (l.dp > 1) {
    buffers += 2 * 4 * std::min(kBucketElements, params);
  }
  if (l.pp == 1) {
    // The stage also computes the loss: fp32 logits and their gradient.
    buffers += 2 * 4 * static_cast<double>(m.seq_len * l.micro_batch * m.vocab) / t;
  }
  mem.buffers = buffers;
  mem.total = mem.weights + mem.gradients + mem.optimizer + mem.activations + mem.buffers;
  mem.capacity = c.cluster.gpu.hbm_bytes;
  mem.used_fraction = mem.total / mem.capacity;
  mem.fits = mem.total <= mem.capacity;
  return mem;
}

}  // namespace kiln::plan
