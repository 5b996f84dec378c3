#include "kiln/plan/host_step_time.h"

#include <algorithm>
#include <cmath>

#include "kiln/comm/tuning.h"
#include "kiln/plan/flops.h"
#include "kiln/plan/host_profile.h"
#include "kiln/plan/stages.h"

namespace kiln::plan {

namespace {

constexpr double kFloat = 4;  // fp32 bytes

// Note [Eager elementwise costs]: bytes (per element) each elementwise op of kiln's GPT
// block reads and writes per element, and how many LibTorch ops a block
// issues. Forward: two LayerNorms (read, write: 8 B), the rotary rotation of
// q and k (neg of a half, cat, two muls, an add: 40 B per element of each),
// scale, mask and softmax on the s×s scores (8 B each), the head merge copy
// (8 B), GeLU on the FFN width (8 B), two residual adds (12 B). About 55 ops
// counting views, the q/k/v selects and the reshapes around the products.
// Backward: autograd runs about twice the forward's elementwise traffic and
// twice its ops (each node's kernels plus gradient accumulation).
constexpr double kNormBytes = 8;
constexpr double kRotaryBytes = 40;
constexpr double kScoreBytesPerOp = 8;
constexpr double kScoreOps = 3;  // scale, masked_fill, softmax
constexpr double kMergeBytes = 8;
constexpr double kGeluBytes = 8;
constexpr double kResidualBytes = 12;
constexpr double kForwardOps = 55;
constexpr double kRotaryOps = 14;  // part of kForwardOps when positions are rotary
constexpr double kBackwardFactor = 2;
// The loss: log_softmax forward (8 B per logit), NLL backward's zero + scatter
// and log_softmax backward (16 B); embedding lookup and its dense backward.
constexpr double kLossFwdBytes = 8;
constexpr double kLossBwdBytes = 16;
constexpr double kLossOps = 10;
constexpr double kEmbeddingOps = 6;
// Note [Eager AdamW]: LibTorch's AdamW updates each parameter tensor with
// about nine ops (decay, two moment updates, sqrt, bias-corrected division,
// eps, addcdiv) moving ~92 B per fp32 parameter; clipping adds a norm and a
// scale per tensor (12 B); zero_grad one op. Twelve ops per tensor in all.
constexpr double kOptimizerBytesPerParam = 104;
constexpr double kOptimizerOpsPerTensor = 12;
// Parameter tensors of a GPT block with biases: ln1, qkv, proj, ln2, fc,
// out, each a weight and a bias (6 without biases).
double tensors_per_layer(const ModelSpec& m) { return m.bias ? 12 : 6; }

comm::LinkCost cost_of(const LinkRates& l) { return {l.alpha_s, l.bytes_per_s}; }

struct Shape {
  double tokens, h, t, heads, hd, qkv_width, ffn_width, seq, batch;
};

Shape shape_of(const PlanConfig& c) {
  const auto& m = c.model;
  const auto& l = c.layout;
  Shape s;
  s.t = static_cast<double>(l.tp);
  s.seq = static_cast<double>(m.seq_len);
  s.batch = static_cast<double>(l.micro_batch);
  s.tokens = s.seq * s.batch;
  s.h = static_cast<double>(m.hidden);
  s.heads = static_cast<double>(m.heads) / s.t;
  s.hd = static_cast<double>(m.head_dim());
  s.qkv_width = (s.h + 2 * static_cast<double>(m.kv_dim())) / s.t;
  s.ffn_width = static_cast<double>(m.ffn_hidden) / s.t;
  return s;
}

// A linear layer's forward product and its two backward products
// (data gradient T×K·K×N, weight gradient N×T·T×K).
struct Product {
  double forward_s, backward_s;
};
Product linear(const ComputeRates& r, double tokens, double n, double k) {
  return {r.gemm_s(tokens, n, k), r.gemm_s(tokens, k, n) + r.gemm_s(n, k, tokens)};
}

double elementwise_s(const ComputeRates& r, double bytes, double ops) {
  return bytes / r.elementwise_bytes_per_s + ops * r.op_overhead_s;
}

}  // namespace

HostLayerTime host_layer_time(const PlanConfig& c, int threads) {
  const ComputeRates r = c.cluster.host->rates(threads);
  const Shape s = shape_of(c);
  const auto& m = c.model;
  HostLayerTime lt;

  const Product qkv = linear(r, s.tokens, s.qkv_width, s.h);
  const Product proj = linear(r, s.tokens, s.h, s.h / s.t);
  const Product fc = linear(r, s.tokens, (m.glu ? 2 : 1) * s.ffn_width, s.h);
  const Product out = linear(r, s.tokens, s.h, s.ffn_width);
  lt.gemm_fwd_s = qkv.forward_s + proj.forward_s + fc.forward_s + out.forward_s;
  const double gemm_bwd = qkv.backward_s + proj.backward_s + fc.backward_s + out.backward_s;

  // QKᵀ (s×hd by hd×s) and attention·V (s×s by s×hd), batched over the
  // micro-batch's local heads; backward: dQ, dK, dV (s×s by s×hd each) and
  // d(attention) (s×hd by hd×s).
  const double bh = s.batch * s.heads;
  const double qk = r.bmm_s(s.seq, s.seq, s.hd, bh);
  const double av = r.bmm_s(s.seq, s.hd, s.seq, bh);
  lt.attention_fwd_s = qk + av;
  const double attention_bwd = 3 * av + qk;

  const double width = s.tokens * s.h;  // full activations: norms and residuals on every TP rank
  const double local = s.tokens * s.h / s.t;
  const double scores = bh * s.seq * s.seq;
  const bool rotary = !m.learned_positions;
  const double bytes = width * (2 * kNormBytes + 2 * kResidualBytes) +
                       (rotary ? 2 * local * kRotaryBytes : 0) +
                       scores * kScoreBytesPerOp * kScoreOps + local * kMergeBytes +
                       s.tokens * s.ffn_width * (m.glu ? 1.5 : 1) * kGeluBytes;
  const double ops = kForwardOps - (rotary ? 0 : kRotaryOps);
  lt.elementwise_fwd_s = elementwise_s(r, bytes, ops);

  lt.forward_s = lt.gemm_fwd_s + lt.attention_fwd_s + lt.elementwise_fwd_s;
  lt.backward_s = gemm_bwd + attention_bwd +
                  elementwise_s(r, kBackwardFactor * bytes, kBackwardFactor * ops);
  lt.ops = (1 + kBackwardFactor) * ops + 12;  // + the 12 products

  // Megatron: all-reduce after the attention and the FFN output forward, and
  // of their input gradients backward (Shoeybi et al. 2019 fig. 3).
  if (c.layout.tp > 1) {
    lt.tp_comm_s =
        4 * comm::ring_allreduce_s(kFloat * width, c.layout.tp, cost_of(c.cluster.host->shm));
  }
  return lt;
}

// Note [Oversubscribed hosts]
// kiln train gives each rank max(1, cores / local ranks) intra-op threads, so
// eight ranks on two cores run one thread each and the kernel's fair share
// gives each runnable rank 2/8 of a core. A rank waiting for a peer (fill
// and drain of the pipeline, a collective) sleeps on its doorbell after a
// short spin and gives its core away. So on such a host time is set less by
// one rank's critical path than by the host's total work over its cores,
// and the pipeline bubble mostly disappears: pipeline_sim.h plays this out.
// Collectives are CPU work too: kiln::comm's shared-memory transport copies
// and reduces on the calling thread, so their cost is shared like compute.
Result<HostStepTime> host_step_time(const PlanConfig& c) {
  if (!c.cluster.host) {
    return invalid_argument(c.source + ": the CPU host model needs cluster.profile");
  }
  const HostProfile& hp = *c.cluster.host;
  const auto& l = c.layout;
  const auto& m = c.model;
  HostStepTime st;
  st.cores = hp.cores;
  st.ranks_per_host = c.cluster.gpus_per_node;
  st.threads_per_rank =
      c.cluster.threads_per_rank > 0
          ? c.cluster.threads_per_rank
          : std::max(1, hp.cores / static_cast<int>(std::max<std::int64_t>(1, st.ranks_per_host)));
  const ComputeRates r = hp.rates(st.threads_per_rank);
  st.oversubscription =
      static_cast<double>(st.ranks_per_host * st.threads_per_rank) / std::max(1, hp.cores);
  st.layer = host_layer_time(c, st.threads_per_rank);
  const HostLayerTime& lt = st.layer;

  const int p = static_cast<int>(l.pp), v = static_cast<int>(l.vpp);
  const double mb = static_cast<double>(l.micro_batches());
  st.micro_batches = mb;
  st.stage_layers = stage_layers(c);
  const Shape s = shape_of(c);
  // Links: the groups of a single-host job use shared memory; across hosts TCP.
  const bool one_host = c.cluster.nodes <= 1;
  const comm::LinkCost shm = cost_of(hp.shm);
  const comm::LinkCost pp_link = one_host ? shm : cost_of(hp.tcp);
  const comm::LinkCost dp_link = one_host || l.tp * l.dp <= st.ranks_per_host ? shm : cost_of(hp.tcp);

  // The embedding (first virtual stage) and the output head with its loss
  // (last one), vocabulary-parallel under TP.
  const double width = s.tokens * s.h;
  const double vocab = static_cast<double>(m.vocab) / s.t;
  const double logits = s.tokens * vocab;
  // Lookup: read and write each row (8 B per element); backward: zero the
  // V×h gradient (4 B), then add each token's row into it (12 B).
  const double embed_fwd = elementwise_s(r, 8 * width, kEmbeddingOps / 2);
  const double embed_bwd = elementwise_s(r, 12 * width + kFloat * vocab * s.h, kEmbeddingOps / 2);
  const Product head = linear(r, s.tokens, vocab, s.h);
  const double norm = elementwise_s(r, kNormBytes * width, 1);  // the final LayerNorm
  const double loss_fwd = head.forward_s + norm + elementwise_s(r, kLossFwdBytes * logits, kLossOps / 2);
  const double loss_bwd = head.backward_s + kBackwardFactor * norm +
                          elementwise_s(r, kLossBwdBytes * logits, kLossOps / 2);
  // TP: the embedding's output and the head's input gradient are all-reduced;
  // the vocabulary-parallel cross-entropy all-reduces a max, a sum and the
  // target logit per token.
  double tp_embed = 0, tp_loss_fwd = 0, tp_loss_bwd = 0;
  if (l.tp > 1) {
    tp_embed = comm::ring_allreduce_s(kFloat * width, l.tp, shm);
    tp_loss_fwd = 3 * comm::ring_allreduce_s(kFloat * s.tokens, l.tp, shm);
    tp_loss_bwd = comm::ring_allreduce_s(kFloat * width, l.tp, shm);
  }
  // Point-to-point: each rank sends its stage's output activation (and
  // receives the gradient) with its peer of the next stage; both sides copy.
  const double p2p = p > 1 ? comm::p2p_s(kFloat * width, pp_link) : 0;

  PipelineSimInput sim;
  sim.stages = p;
  sim.chunks = v;
  sim.micro_batches = static_cast<int>(mb);
  sim.forward_s.assign(static_cast<size_t>(p), std::vector<double>(static_cast<size_t>(v), 0));
  sim.backward_s = sim.forward_s;
  sim.p2p_latency_s = p > 1 ? pp_link.alpha_s : 0;
  sim.ranks_per_device = static_cast<int>(l.tp * l.dp);
  sim.threads_per_rank = st.threads_per_rank;
  sim.cores = hp.cores;
  st.stage_forward_s.assign(static_cast<size_t>(p), 0);
  st.stage_backward_s.assign(static_cast<size_t>(p), 0);
  std::vector<double> stage_tp(static_cast<size_t>(p), 0), stage_p2p(static_cast<size_t>(p), 0);
  const int last = p * v - 1;
  for (int d = 0; d < p; ++d) {
    const double layers = static_cast<double>(st.stage_layers[static_cast<size_t>(d)]);
    for (int k = 0; k < v; ++k) {
      const int j = k * p + d;
      const double chunk_layers = layers / v;
      double fwd = chunk_layers * (lt.forward_s + lt.tp_comm_s / 2);
      double bwd = chunk_layers * (lt.backward_s + lt.tp_comm_s / 2);
      double tp = chunk_layers * lt.tp_comm_s;
      double sends = 0;
      if (j == 0) {
        fwd += embed_fwd + tp_embed;
        bwd += embed_bwd;
        tp += tp_embed;
      }
      if (j == last) {
        fwd += loss_fwd + tp_loss_fwd;
        bwd += loss_bwd + tp_loss_bwd;
        tp += tp_loss_fwd + tp_loss_bwd;
      }
      if (j < last) sends += p2p;  // the activation forward
      if (j > 0) sends += p2p;     // the gradient backward
      fwd += j < last ? p2p : 0;
      bwd += j > 0 ? p2p : 0;
      sim.forward_s[static_cast<size_t>(d)][static_cast<size_t>(k)] = fwd;
      sim.backward_s[static_cast<size_t>(d)][static_cast<size_t>(k)] = bwd;
      st.stage_forward_s[static_cast<size_t>(d)] += fwd;
      st.stage_backward_s[static_cast<size_t>(d)] += bwd;
      stage_tp[static_cast<size_t>(d)] += tp;
      stage_p2p[static_cast<size_t>(d)] += sends;
    }
  }

  // DP: each stage's gradients, all-reduced over its DP group once the
  // stage's last backward is done (kiln::ddp overlaps buckets with that
  // backward, but on a shared host the copies compete for the same cores).
  std::vector<double> dp_tail(static_cast<size_t>(p), 0);
  double max_params = 0;
  for (int d = 0; d < p; ++d) {
    const double params = stage_params_per_gpu(c, d);
    max_params = std::max(max_params, params);
    if (l.dp > 1) dp_tail[static_cast<size_t>(d)] = comm::ring_allreduce_s(kFloat * params, l.dp, dp_link);
  }

  // The pipeline alone, then with the DP tails: the difference is the
  // exposed DP time.
  KILN_ASSIGN_OR_RETURN(PipelineSimResult bare, simulate_pipeline(sim));
  sim.tail_s = dp_tail;
  KILN_ASSIGN_OR_RETURN(st.pipeline, simulate_pipeline(sim));

  // Steady state: every rank of the host runnable.
  const double share = std::max(1.0, st.oversubscription);
  int slow = 0;
  for (int d = 1; d < p; ++d) {
    const auto w = [&](int i) {
      return st.stage_forward_s[static_cast<size_t>(i)] + st.stage_backward_s[static_cast<size_t>(i)];
    };
    if (w(d) > w(slow)) slow = d;
  }
  st.slowest_stage = slow;
  const size_t ss = static_cast<size_t>(slow);
  const double work = st.stage_forward_s[ss] + st.stage_backward_s[ss];
  double compute = mb * share * (work - stage_tp[ss] - stage_p2p[ss]);
  double tp_comm = mb * share * stage_tp[ss];
  double pp_comm = mb * share * stage_p2p[ss];
  const double ideal = compute + tp_comm + pp_comm;
  // A shared host can beat the steady-state estimate of the slowest stage
  // (others idle while it works): then the components shrink in proportion.
  if (ideal > bare.makespan_s && ideal > 0) {
    const double f = bare.makespan_s / ideal;
    compute *= f;
    tp_comm *= f;
    pp_comm *= f;
  }
  st.compute_s = compute;
  st.tp_comm_s = tp_comm;
  st.pp_comm_s = pp_comm;
  st.pp_bubble_s = std::max(0.0, bare.makespan_s - ideal);
  st.dp_comm_s = st.pipeline.makespan_s - bare.makespan_s;

  // Clipping agrees on the global gradient norm (a scalar all-reduce over
  // every rank), then all ranks update their parameters at once: compute
  // shared as in the steady state, memory traffic bounded by the host's
  // aggregate bandwidth.
  const double world = static_cast<double>(l.tp * l.pp * l.dp);
  const double norm_sync = comm::ring_allreduce_s(8, static_cast<std::int64_t>(world), shm);
  const double tensors =
      st.stage_layers[ss] * tensors_per_layer(m) + 4;  // + embedding/head/final norm, roughly
  const double update_bytes = kOptimizerBytesPerParam * max_params;
  const double one = update_bytes / hp.stream_bytes_per_s + kOptimizerOpsPerTensor * tensors * r.op_overhead_s;
  const double host_ranks = static_cast<double>(st.ranks_per_host);
  st.optimizer_s = norm_sync + std::max(one * share, host_ranks * update_bytes / hp.stream_all_bytes_per_s);

  st.step_s = st.pipeline.makespan_s + st.optimizer_s;
  st.bubble_formula = static_cast<double>(p - 1) / (static_cast<double>(v) * mb);
  st.bubble_fraction = ideal > 0 ? st.pp_bubble_s / ideal : 0;
  return st;
}

}  // namespace kiln::plan
