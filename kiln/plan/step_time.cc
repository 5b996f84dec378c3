#include "kiln/plan/step_time.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kiln/plan/flops.h"
#include "kiln/plan/stages.h"

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
// Memory-bound kernels a layer's forward launches besides its GEMMs: two
// norms, two fused bias-dropout-residual adds, the activation; unfused
// attention adds the softmax and (with dropout) its dropout. Each pays a
// launch; the backward launches twice as many.
constexpr double kElementwiseKernels = 5;
// FlashAttention backward does 2.5× the forward's matmuls (it recomputes the scores).
constexpr double kFlashBackwardRatio = 2.5;
// Adam update: read fp32 master, m, v, grad; write master, m, v and the bf16 copy.
constexpr double kOptimizerBytesPerParam = 30;
// Cross-entropy on fp32 logits: write, read for max/sum, write grad, read.
constexpr double kLossBytesPerLogit = 16;
// Gradient buckets of Megatron's and PyTorch DDP's reducers (elements): each
// bucket is one all-reduce and pays its ring latency.
constexpr double kGradBucketElements = 40e6;

// Parameter tensors of one layer when each is gathered on its own: four
// weight matrices (fused QKV, output, FFN in, FFN out) with their biases, and
// two norms with a weight (and a bias).
double tensors_per_layer(const ModelSpec& m) { return 4 * (m.bias ? 2 : 1) + 2 * (m.bias ? 2 : 1); }

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
  const double qkv_gemm_s = gemm_time_s(gpu, e, l.mma, tokens, (h + 2 * kvd) / t, h);
  lt.gemm_fwd_s = qkv_gemm_s + gemm_time_s(gpu, e, l.mma, tokens, h, h / t) +
                  gemm_time_s(gpu, e, l.mma, tokens, (m.glu ? 2 : 1) * f / t, h) +
                  gemm_time_s(gpu, e, l.mma, tokens, h, f / t);
  const double gemm_flops = 2 * tokens * (h * (h + 2 * kvd) + h * h + (m.glu ? 3 : 2) * h * f) / t;
  lt.gemm_efficiency = gemm_flops / gpu.peak_bf16_flops / lt.gemm_fwd_s;

  double attention_bwd = 0;
  if (l.attention == AttentionKernel::kUnfused) {
    const double score_gemms = gemm_time_s(gpu, e, l.mma, s, s, hd, b * heads) +
                               gemm_time_s(gpu, e, l.mma, s, hd, s, b * heads);
    const double scores = b * heads * s * s;
    const double launches = (1 + drop) * e.kernel_launch_s;
    lt.attention_fwd_s =
        score_gemms + launches +
        memory_time_s(gpu, e, scores * (kSoftmaxFwdBytes + drop * kScoreDropoutBytes));
    attention_bwd = 2 * score_gemms + 2 * launches +
                    memory_time_s(gpu, e, scores * (kSoftmaxBwdBytes + drop * kScoreDropoutBytes));
  } else {
    // Causal: FlashAttention skips the masked upper half.
    const double flops = 0.5 * 4 * b * s * s * h / t;
    lt.attention_fwd_s = flash_attention_time_s(gpu, e, l.mma, flops, hd);
    attention_bwd = kFlashBackwardRatio * lt.attention_fwd_s;
  }

  // Without sequence parallelism every TP rank redoes the norms and residuals
  // on the whole sequence.
  const double rows = l.sequence_parallel ? tokens / t : tokens;
  const double ew_bytes =
      rows * h * (2 * kNormBytes + 2 * (kResidualBytes + drop * kDropoutMaskBytes)) +
      tokens * f / t * (m.glu ? 6 : 4);
  lt.elementwise_fwd_s = memory_time_s(gpu, e, ew_bytes) + kElementwiseKernels * e.kernel_launch_s;

  lt.forward_s = lt.gemm_fwd_s + lt.attention_fwd_s + lt.elementwise_fwd_s;
  // dgrad and wgrad: two GEMMs of the forward's size each.
  lt.backward_s = 2 * lt.gemm_fwd_s + attention_bwd + 2 * lt.elementwise_fwd_s;
  double recomputed_gemms = 0;
  switch (l.recompute) {
    case Recompute::kNone:
      lt.recompute_s = 0;
      break;
    case Recompute::kSelective:
      lt.recompute_s = lt.attention_fwd_s;
      break;
    case Recompute::kFull:
      lt.recompute_s = lt.forward_s;
      recomputed_gemms = lt.gemm_fwd_s;
      break;
    case Recompute::kSaveQkv:
      lt.recompute_s = lt.forward_s - qkv_gemm_s;
      recomputed_gemms = lt.gemm_fwd_s - qkv_gemm_s;
      break;
  }

  // Two all-reduces forward, two backward, two more when the forward is
  // recomputed (Shoeybi et al. 2019 fig. 4). With sequence parallelism each
  // becomes an all-gather + reduce-scatter pair of the same ring time.
  const double act_bytes = 2 * tokens * h;
  const int collectives = 4 + (recomputes_forward(l.recompute) ? 2 : 0);
  lt.tp_comm_s = collectives * comm::ring_allreduce_s(act_bytes, l.tp, tp_link(c, e).cost);
  lt.tp_exposed_s = lt.tp_comm_s;
  if (l.tp_comm_overlap) {
    // Each collective is split into chunks pipelined with the GEMM that
    // consumes or produces it; what the GEMMs cannot cover stays exposed,
    // and the hidden part still slows them (shared SMs and HBM).
    const double gemms = 3 * lt.gemm_fwd_s + recomputed_gemms;
    const double exposed = std::max(0.0, lt.tp_comm_s - gemms);
    lt.tp_exposed_s = exposed + e.overlap_interference * (lt.tp_comm_s - exposed);
  }

  lt.total_s = lt.forward_s + lt.backward_s + lt.recompute_s + lt.tp_exposed_s;
  return lt;
}

namespace {

// Note [ZeRO-3 exposure]
// ZeRO-3 gathers a unit's weights over the DP group before each pass that
// uses them (forward; backward, whose recomputed forward runs on the same
// gathered weights) and reduce-scatters its gradients after its backward. The next unit's gather is
// prefetched while this one computes, so per layer and pass only
//   max(0, t_collectives − t_compute)
// is exposed, plus the whole first gather of each pass (nothing to hide
// behind). Each collective pays its ring latency (n − 1)·α, per unit: with a
// unit per parameter tensor and a DP group of a thousand GPUs this latency,
// not bandwidth, dominates (Narayanan et al. 2021 Table 2: ZeRO-3 falls from
// 144 to 44 TFLOP/s per GPU as 175B goes from 384 to 1,536 GPUs). The hidden
// part costs overlap_interference of its time.
// With hybrid sharding the collectives run over the shard group, and each
// layer's backward adds the replicas' all-reduce of the rank's gradient
// shard (1/shards of the layer) across the replica group, hidden like the
// rest behind the backward.
struct Zero3Cost {
  double per_layer_s = 0;    // exposed (+ interference) per layer per micro-batch
  double per_stage_s = 0;    // the first gather of each pass, per micro-batch
  double collectives_s = 0;  // raw collective time per layer per micro-batch
  double layer_bytes = 0;    // bytes one GPU sends per layer per micro-batch
};

Zero3Cost zero3_cost(const PlanConfig& c, const EfficiencyModel& e, const LayerTime& lt,
                     const Link& link, const Link& replica_link) {
  const auto& m = c.model;
  const auto& l = c.layout;
  const ParamCount pc = count_params(m);
  const double t = static_cast<double>(l.tp);
  const double layer_bytes = l.zero3_param_bytes * ((pc.attention + pc.ffn) / t + pc.norms);
  const double units = l.zero3_gather == GatherUnit::kTensor ? tensors_per_layer(m) : 1.0;
  const std::int64_t shards = l.zero3_shards();
  const std::int64_t replicas = l.zero3_replicas();
  const double gather = units * comm::ring_allgather_s(layer_bytes / units, shards, link.cost);
  const double scatter =
      units * comm::ring_reduce_scatter_s(layer_bytes / units, shards, link.cost);
  const double shard_bytes = layer_bytes / static_cast<double>(shards);
  const double replica_reduce =
      replicas > 1 ? comm::ring_allreduce_s(shard_bytes, replicas, replica_link.cost) : 0.0;
  const bool full = recomputes_forward(l.recompute);
  const double tp_share = lt.tp_exposed_s / (full ? 6.0 : 4.0);  // per TP collective

  struct Pass {
    double collectives_s, compute_s;
  };
  // A layer's recomputed forward runs just before its backward, on the
  // weights gathered for that backward: one gather serves both.
  const std::vector<Pass> passes = {{gather, lt.forward_s + 2 * tp_share},
                                    {gather + scatter + replica_reduce,
                                     lt.backward_s + lt.recompute_s + (full ? 4 : 2) * tp_share}};

  Zero3Cost z;
  for (const Pass& p : passes) {
    const double exposed = std::max(0.0, p.collectives_s - p.compute_s);
    z.per_layer_s += exposed + e.overlap_interference * (p.collectives_s - exposed);
    z.per_stage_s += gather;
    z.collectives_s += p.collectives_s;
  }
  const double n = static_cast<double>(shards), r = static_cast<double>(replicas);
  z.layer_bytes = (static_cast<double>(passes.size()) + 1) * layer_bytes * (n - 1) / n +
                  2 * shard_bytes * (r - 1) / r;
  return z;
}

}  // namespace

StepTime step_time(const PlanConfig& c, const EfficiencyModel& e) {
  const auto& m = c.model;
  const auto& l = c.layout;
  const auto& gpu = c.cluster.gpu;
  StepTime st;
  st.layer = layer_time(c, e);
  const LayerTime& lt = st.layer;

  const double t = static_cast<double>(l.tp);
  const double v = static_cast<double>(l.vpp);
  const double mb = static_cast<double>(l.micro_batches());
  const double tokens = static_cast<double>(m.seq_len * l.micro_batch);
  const double h = static_cast<double>(m.hidden);
  st.micro_batches = mb;
  st.stage_layers = stage_layers(c);
  const size_t stages = st.stage_layers.size();

  // Point-to-point: one activation forward and one gradient backward per
  // micro-batch per model chunk. Across nodes each TP rank sends its 1/t
  // slice on its own NIC (Megatron's scatter/gather, or natively with SP),
  // then the slices are all-gathered over NVLink.
  const double act_bytes = 2 * tokens * h;
  double p2p = 0;
  if (l.pp > 1) {
    const Link link = pp_link(c, e);
    // With SP the activation is already split; without scatter/gather each
    // rank sends all of it.
    const double sent = l.sequence_parallel || l.pp_scatter_gather ? act_bytes / t : act_bytes;
    double one = comm::p2p_s(sent, link.cost);
    if (pp_crosses_nodes(c) && !l.sequence_parallel && l.pp_scatter_gather) {
      one += comm::ring_allgather_s(act_bytes, l.tp, nvlink_link(c.cluster, e).cost);
    }
    p2p = 2 * v * one;
    st.pp.link = link.name;
    st.pp.bytes_per_gpu = 2 * v * sent * mb;
    st.pp.time_s = p2p * mb;
  } else {
    st.pp.link = "none";
  }

  // The loss: logits GEMM (fwd + 2× bwd) and cross-entropy on the last stage.
  const double vocab_shard = static_cast<double>(m.vocab) / t;
  const double loss_s = 3 * gemm_time_s(gpu, e, l.mma, tokens, vocab_shard, h) +
                        memory_time_s(gpu, e, tokens * vocab_shard * kLossBytesPerLogit);

  const Link dlink = dp_link(c, e);
  const double layer_compute = lt.forward_s + lt.backward_s + lt.recompute_s;
  const bool zero3 = l.zero >= 3 && l.dp > 1;
  Zero3Cost z3;
  // Embedding (first stage) and output head (last stage) are gathered once per
  // micro-batch and reduce-scattered after its backward, with nothing to hide behind.
  std::vector<double> root_s(stages, 0.0);
  // Note [Per-tensor gathers use one NIC]: one collective per parameter
  // tensor, issued back to back, measured at one NIC's bandwidth per GPU
  // (Narayanan et al. 2021 Table 2: 175B and 530B ZeRO-3 steps take as long
  // on 768 as on 1,536 GPUs, and on 1,120 as on 2,240, each GPU receiving
  // the whole model per pass at ~22 GB/s), not the hierarchical rings'
  // k NICs that a layer-sized buffer spreads over.
  const std::int64_t shards = l.zero3_shards();
  Link z3link = zero3 ? strided_group_link(c, e, shards, l.tp) : dlink;
  if (zero3 && l.zero3_gather == GatherUnit::kTensor && l.tp * shards > c.cluster.gpus_per_node) {
    z3link = {"nic (per-tensor)", {z3link.cost.alpha_s, nic_link(c.cluster, e).cost.beta_bps}};
  }
  const Link replica_link = strided_group_link(c, e, l.zero3_replicas(), l.tp * shards);
  if (zero3) {
    z3 = zero3_cost(c, e, lt, z3link, replica_link);
    const double last_params = stage_params_per_gpu(c, l.pp - 1);
    const double first_params = stage_params_per_gpu(c, 0);
    const ParamCount pc = count_params(m);
    const double layer_params = (pc.attention + pc.ffn) / t + pc.norms;
    const double bytes = l.zero3_param_bytes;
    auto root = [&](double params) {
      return comm::ring_allgather_s(bytes * params, shards, z3link.cost) +
             comm::ring_reduce_scatter_s(bytes * params, shards, z3link.cost) +
             (l.zero3_replicas() > 1
                  ? comm::ring_allreduce_s(bytes * params / static_cast<double>(shards),
                                           l.zero3_replicas(), replica_link.cost)
                  : 0.0);
    };
    root_s.front() += root(std::max(0.0, first_params - st.stage_layers.front() * layer_params));
    if (stages > 1) {
      root_s.back() += root(std::max(0.0, last_params - st.stage_layers.back() * layer_params));
    }
  }

  st.stage_times_s.resize(stages);
  double sum = 0;
  for (size_t i = 0; i < stages; ++i) {
    const double n = static_cast<double>(st.stage_layers[i]);
    double ti = n * (lt.total_s + (zero3 ? z3.per_layer_s : 0)) + p2p + root_s[i] +
                (zero3 ? z3.per_stage_s : 0);
    if (i + 1 == stages) ti += loss_s;
    st.stage_times_s[i] = ti;
    sum += ti;
    if (ti > st.stage_times_s[static_cast<size_t>(st.slowest_stage)])
      st.slowest_stage = static_cast<int>(i);
  }
  const size_t slow = static_cast<size_t>(st.slowest_stage);
  const double t_max = st.stage_times_s[slow];
  const double slow_layers = static_cast<double>(st.stage_layers[slow]);
  const bool slow_is_last = slow + 1 == stages;
  st.stage_s = t_max;
  st.last_stage_s = st.stage_times_s.back();
  st.pp_bubble_s = (sum - t_max) / v;

  st.compute_s = mb * (slow_layers * layer_compute + (slow_is_last ? loss_s : 0));
  st.recompute_s = mb * slow_layers * lt.recompute_s;
  st.tp_comm_s = mb * slow_layers * lt.tp_exposed_s;
  st.pp_comm_s = mb * p2p;
  st.tp.link = l.tp > 1 ? tp_link(c, e).name : "none";
  st.tp.time_s = mb * slow_layers * lt.tp_comm_s;
  st.tp.bytes_per_gpu = mb * slow_layers * (4 + (recomputes_forward(l.recompute) ? 2 : 0)) * 2 *
                        (t - 1) / t * act_bytes;

  // The stage with the most parameters finishes the step: its gradient
  // reduction and optimizer update are the longest.
  double params = 0;
  for (std::int64_t i = 0; i < l.pp; ++i) params = std::max(params, stage_params_per_gpu(c, i));

  double dp_exposed = 0;
  if (zero3) {
    dp_exposed = mb * (slow_layers * z3.per_layer_s + z3.per_stage_s + root_s[slow]);
    st.dp.time_s = mb * (slow_layers * z3.collectives_s + root_s[slow]);
    st.dp.bytes_per_gpu = mb * slow_layers * z3.layer_bytes;
  } else if (l.dp > 1) {
    // Gradient reduction (ZeRO 0-2): reduce-scatter + all-gather, the volume
    // of one all-reduce, once per step, in buckets that each pay the ring's
    // latency. It can hide only behind the last micro-batch's backward:
    // earlier ones accumulate locally.
    const double buckets = std::max(1.0, std::ceil(params / kGradBucketElements));
    st.dp.time_s = buckets * comm::ring_allreduce_s(2 * params / buckets, l.dp, dlink.cost);
    st.dp.bytes_per_gpu = 2 * (l.dp - 1) / static_cast<double>(l.dp) * 2 * params;
    if (l.overlap_grad_reduce) {
      const double window = slow_layers * (lt.backward_s + lt.recompute_s + lt.tp_exposed_s);
      const double exposed = std::min(
          st.dp.time_s, std::max(st.dp.time_s - window, st.dp.time_s / std::max(1.0, slow_layers)));
      dp_exposed = exposed + e.overlap_interference * (st.dp.time_s - exposed);
    } else {
      dp_exposed = st.dp.time_s;
    }
  }
  st.dp.link = l.dp > 1 ? (zero3 ? z3link.name : dlink.name) : "none";
  st.dp_exposed_s = dp_exposed;
  // dp_exposed_s includes the interference the hidden part causes.
  st.dp_overlap_fraction = st.dp.time_s > 0 ? 1 - std::min(1.0, st.dp_exposed_s / st.dp.time_s) : 0;

  const double update_params = params / (l.zero >= 3   ? static_cast<double>(shards)
                                         : l.zero >= 1 ? static_cast<double>(l.dp)
                                                       : 1.0);
  st.optimizer_s = memory_time_s(gpu, e, update_params * kOptimizerBytesPerParam);

  // Pipeline time; for ZeRO-3 its exposed gathers already sit in the stage times.
  const double pipeline = mb * t_max + st.pp_bubble_s;
  st.step_s = pipeline + (zero3 ? 0 : st.dp_exposed_s) + st.optimizer_s;
  return st;
}

}  // namespace kiln::plan
