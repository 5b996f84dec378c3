#include "kiln/plan/step_time.h"

#include <algorithm>

#include "kiln/plan/flops.h"

namespace kiln::plan {

namespace {

// Bytes each memory-bound pass moves per element (bf16 = 2 bytes).
// Note [Elementwise traffic]: a norm reads and writes its input (4); a fused
// bias+dropout+residual reads two tensors, writes one and a 1-byte mask (7,
// or 6 without dropout); GeLU reads and writes the FFN width (4); SwiGLU
// reads gate and up and writes one (6). Backward moves about twice as much.
constexpr double kNormBytes = 4;
constexpr double kResidualBytes = 6;
constexpr double kDropoutMaskBytes = 1;
// Unfused attention on the s×s scores: scale+mask+softmax fused read+write
// (4), dropout read+write+mask (5); backward: softmax 6, dropout 5.
constexpr double kSoftmaxFwdBytes = 4;
constexpr double kSoftmaxBwdBytes = 6;
constexpr double kScoreDropoutBytes = 5;
// FlashAttention backward does 2.5× the forward's matmuls (it recomputes the scores).
constexpr double kFlashBackwardRatio = 2.5;
// Adam update: read fp32 master, m, v, grad; write master, m, v and the bf16 copy.
constexpr double kOptimizerBytesPerParam = 30;
// Cross-entropy on fp32 logits: write, read for max/sum, write grad, read.
constexpr double kLossBytesPerLogit = 16;

}  // namespace

LayerTime layer_time(const PlanConfig& c, const EfficiencyModel& e) {
  const auto& m = c.model;
  const auto& l = c.layout;
  const auto& gpu = c.cluster.gpu;
  const double t = static_cast<double>(l.tp);
  const double s = static_cast<double>(m.seq_len);
  const double b = static_cast<double>(l.micro_batch);
  const double tokens = s * b;
  const double h = static_cast<double>(m.hidden);
  const double f = static_cast<double>(m.ffn_hidden);
  const double kvd = static_cast<double>(m.kv_dim());
  const double hd = static_cast<double>(m.head_dim());
  const double heads = static_cast<double>(m.heads) / t;
  const double drop = m.dropout ? 1.0 : 0.0;

  LayerTime lt;
  lt.gemm_fwd_s = gemm_time_s(gpu, e, tokens, (h + 2 * kvd) / t, h) +
                  gemm_time_s(gpu, e, tokens, h, h / t) +
                  gemm_time_s(gpu, e, tokens, (m.glu ? 2 : 1) * f / t, h) +
                  gemm_time_s(gpu, e, tokens, h, f / t);
  const double gemm_flops = 2 * tokens * (h * (h + 2 * kvd) + h * h + (m.glu ? 3 : 2) * h * f) / t;
  lt.gemm_efficiency = gemm_flops / gpu.peak_bf16_flops / lt.gemm_fwd_s;

  double attention_bwd = 0;
  if (l.attention == AttentionKernel::kUnfused) {
    const double score_gemms =
        gemm_time_s(gpu, e, s, s, hd, b * heads) + gemm_time_s(gpu, e, s, hd, s, b * heads);
    const double scores = b * heads * s * s;
    lt.attention_fwd_s =
        score_gemms +
        memory_time_s(gpu, e, scores * (kSoftmaxFwdBytes + drop * kScoreDropoutBytes));
    attention_bwd = 2 * score_gemms +
                    memory_time_s(gpu, e, scores * (kSoftmaxBwdBytes + drop * kScoreDropoutBytes));
  } else {
    // Causal: FlashAttention skips the masked upper half.
    const double flops = 0.5 * 4 * b * s * s * h / t;
    lt.attention_fwd_s = flash_attention_time_s(gpu, e, flops);
    attention_bwd = kFlashBackwardRatio * lt.attention_fwd_s;
  }

  // Without sequence parallelism every TP rank redoes the norms and residuals
  // on the whole sequence.
  const double rows = l.sequence_parallel ? tokens / t : tokens;
  const double ew_bytes =
      rows * h * (2 * kNormBytes + 2 * (kResidualBytes + drop * kDropoutMaskBytes)) +
      tokens * f / t * (m.glu ? 6 : 4);
  lt.elementwise_fwd_s = memory_time_s(gpu, e, ew_bytes);

  lt.forward_s = lt.gemm_fwd_s + lt.attention_fwd_s + lt.elementwise_fwd_s;
  // dgrad and wgrad: two GEMMs of the forward's size each.
  lt.backward_s = 2 * lt.gemm_fwd_s + attention_bwd + 2 * lt.elementwise_fwd_s;
  switch (l.recompute) {
    case Recompute::kNone:
      lt.recompute_s = 0;
      break;
    case Recompute::kSelective:
      lt.recompute_s = lt.attention_fwd_s;
      break;
    case Recompute::kFull:
      lt.recompute_s = lt.forward_s;
      break;
  }

  // Two all-reduces forward, two backward, two more when the forward is
  // recomputed (Shoeybi et al. 2019 fig. 4). With sequence parallelism each
  // becomes an all-gather + reduce-scatter pair of the same ring time.
  const double act_bytes = 2 * tokens * h;
  const int collectives = 4 + (l.recompute == Recompute::kFull ? 2 : 0);
  lt.tp_comm_s = collectives * allreduce_time_s(tp_link(c, e), l.tp, act_bytes);

  lt.total_s = lt.forward_s + lt.backward_s + lt.recompute_s + lt.tp_comm_s;
  return lt;
}

StepTime step_time(const PlanConfig& c, const EfficiencyModel& e) {
  const auto& m = c.model;
  const auto& l = c.layout;
  const auto& gpu = c.cluster.gpu;
  StepTime st;
  st.layer = layer_time(c, e);
  const LayerTime& lt = st.layer;

  const double t = static_cast<double>(l.tp);
  const double p = static_cast<double>(l.pp);
  const double v = static_cast<double>(l.vpp);
  const double mb = static_cast<double>(l.micro_batches());
  const double tokens = static_cast<double>(m.seq_len * l.micro_batch);
  const double h = static_cast<double>(m.hidden);
  const double layers = static_cast<double>(m.layers) / p;
  st.micro_batches = mb;

  // Point-to-point: one activation forward and one gradient backward per
  // micro-batch per model chunk. Across nodes each TP rank sends its 1/t
  // slice on its own NIC (Megatron's scatter/gather, or natively with SP),
  // then the slices are all-gathered over NVLink.
  const double act_bytes = 2 * tokens * h;
  double p2p = 0;
  if (l.pp > 1) {
    const Link link = pp_link(c, e);
    double one = p2p_time_s(link, act_bytes / t);
    if (pp_crosses_nodes(c) && !l.sequence_parallel) {
      one += allgather_time_s(nvlink_link(c.cluster, e), l.tp, act_bytes);
    }
    p2p = 2 * v * one;
    st.pp.link = link.name;
    st.pp.bytes_per_gpu = 2 * v * act_bytes / t * mb;
    st.pp.time_s = p2p * mb;
  } else {
    st.pp.link = "none";
  }

  // The loss: logits GEMM (fwd + 2× bwd) and cross-entropy on the last stage.
  const double vocab_shard = static_cast<double>(m.vocab) / t;
  const double loss_s = 3 * gemm_time_s(gpu, e, tokens, vocab_shard, h) +
                        memory_time_s(gpu, e, tokens * vocab_shard * kLossBytesPerLogit);

  // ZeRO-3 gathers the stage's weights for every micro-batch's forward (and
  // recomputed forward) and backward, and reduce-scatters its gradients.
  const double params = stage_params_per_gpu(c, l.pp - 1);
  const Link dlink = dp_link(c, e);
  const double layer_compute = lt.forward_s + lt.backward_s + lt.recompute_s;
  double zero3_exposed_mb = 0;
  if (l.zero >= 3 && l.dp > 1) {
    const int gathers = 2 + (l.recompute == Recompute::kFull ? 1 : 0);
    const double per_mb = gathers * allgather_time_s(dlink, l.dp, 2 * params) +
                          reduce_scatter_time_s(dlink, l.dp, 2 * params);
    // Prefetching hides a gather behind the previous layer's compute; the
    // first layer's cannot be hidden.
    const double exposed =
        std::min(per_mb, std::max(0.0, per_mb - layers * layer_compute) + per_mb / layers);
    zero3_exposed_mb = exposed + e.overlap_interference * (per_mb - exposed);
    st.dp.time_s = per_mb * mb;
    st.dp.bytes_per_gpu = (gathers + 1) * 2 * params * (l.dp - 1) / static_cast<double>(l.dp) * mb;
  }

  st.stage_s = layers * lt.total_s + p2p + zero3_exposed_mb;
  st.last_stage_s = st.stage_s + loss_s;
  const double slowest = std::max(st.stage_s, st.last_stage_s);
  st.pp_bubble_s = (p - 1) / v * st.stage_s;

  st.compute_s = mb * (layers * layer_compute + loss_s);
  st.recompute_s = mb * layers * lt.recompute_s;
  st.tp_comm_s = mb * layers * lt.tp_comm_s;
  st.pp_comm_s = mb * p2p;
  st.tp.link = l.tp > 1 ? tp_link(c, e).name : "none";
  st.tp.time_s = st.tp_comm_s;
  st.tp.bytes_per_gpu =
      mb * layers * (4 + (l.recompute == Recompute::kFull ? 2 : 0)) * 2 * (t - 1) / t * act_bytes;

  // Gradient reduction (ZeRO 0-2): reduce-scatter + all-gather, the volume of
  // one all-reduce, once per step. It can hide only behind the last
  // micro-batch's backward: earlier ones accumulate locally.
  double dp_exposed = mb * zero3_exposed_mb;
  if (l.zero < 3) {
    st.dp.time_s = allreduce_time_s(dlink, l.dp, 2 * params);
    st.dp.bytes_per_gpu = l.dp > 1 ? 2 * (l.dp - 1) / static_cast<double>(l.dp) * 2 * params : 0;
    if (l.overlap_grad_reduce) {
      const double window = layers * (lt.backward_s + lt.recompute_s + lt.tp_comm_s);
      const double exposed =
          std::min(st.dp.time_s, std::max(st.dp.time_s - window, st.dp.time_s / layers));
      dp_exposed = exposed + e.overlap_interference * (st.dp.time_s - exposed);
    } else {
      dp_exposed = st.dp.time_s;
    }
  }
  st.dp.link = l.dp > 1 ? dlink.name : "none";
  st.dp_exposed_s = l.dp > 1 ? dp_exposed : 0;
  // dp_exposed_s includes the interference the hidden part causes.
  st.dp_overlap_fraction = st.dp.time_s > 0 ? 1 - std::min(1.0, st.dp_exposed_s / st.dp.time_s) : 0;

  const double update_params = params / (l.zero >= 1 ? static_cast<double>(l.dp) : 1.0);
  st.optimizer_s = memory_time_s(gpu, e, update_params * kOptimizerBytesPerParam);

  // Pipeline time; for ZeRO-3 its exposed gathers already sit in stage_s.
  const double pipeline = mb * slowest + st.pp_bubble_s;
  st.step_s = pipeline + (l.zero < 3 ? st.dp_exposed_s : 0) + st.optimizer_s;
  return st;
}

}  // namespace kiln::plan
