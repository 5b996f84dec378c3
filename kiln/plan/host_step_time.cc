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

// Parameter tensors of a GPT block: ln1, qkv, proj, ln2, fc, out, each a
// weight and (with biases) a bias.
double tensors_per_layer(const ModelSpec& m) { return m.bias ? 12 : 6; }

comm::LinkCost cost_of(const LinkRates& l) { return {l.alpha_s, l.bytes_per_s}; }

// Exchange rounds of a small-message collective over n ranks (recursive
// doubling): each is a blocking message that may need a hand-off.
double collective_rounds(std::int64_t n) {
  return n > 1 ? std::ceil(std::log2(static_cast<double>(n))) : 0;
}

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

}  // namespace

// Note [Composing a block]: a layer is the sum of its kernel classes, each
// priced by the profile as measured (forward and backward apart, autograd
// included): four linear layers on the rank's TP shard, the attention core
// on its local heads (QKᵀ, scale, causal mask, softmax, ·V, heads merged),
// two LayerNorms and two residual adds on the full width (every TP rank
// redoes them), GeLU on the FFN shard, and the rotary rotation of q and k.
// Backward, the residual stream's gradients meet twice more (two adds).
HostLayerTime host_layer_time(const PlanConfig& c, int threads) {
  const ComputeRates& r = c.cluster.host->rates(threads);
  const Shape s = shape_of(c);
  const auto& m = c.model;
  HostLayerTime lt;
  const double ffn = (m.glu ? 2 : 1) * s.ffn_width;
  struct Linear {
    double n, k;
  };
  const Linear linears[] = {{s.qkv_width, s.h}, {s.h, s.h / s.t}, {ffn, s.h}, {s.h, s.ffn_width}};
  double linear_bwd = 0;
  for (const Linear& l : linears) {
    lt.gemm_fwd_s += r.linear_fwd.at(s.tokens, l.n, l.k);
    linear_bwd += r.linear_bwd.at(s.tokens, l.n, l.k);
  }
  const double bh = s.batch * s.heads;
  lt.attention_fwd_s = r.attention_fwd.at(bh, s.seq, s.hd);
  const double attention_bwd = r.attention_bwd.at(bh, s.seq, s.hd);

  const double width = s.tokens * s.h;
  const double local = s.tokens * s.h / s.t;
  const double gelu = s.tokens * s.ffn_width * (m.glu ? 2 : 1);
  const bool rotary = !m.learned_positions;
  lt.elementwise_fwd_s = 2 * r.layer_norm_fwd.at(width) + 2 * r.add.at(width) +
                         r.gelu_fwd.at(gelu) + (rotary ? 2 * r.rotary_fwd.at(local) : 0);
  const double elementwise_bwd = 2 * r.layer_norm_bwd.at(width) + 2 * r.add.at(width) +
                                 r.gelu_bwd.at(gelu) + (rotary ? 2 * r.rotary_bwd.at(local) : 0);

  lt.forward_s = lt.gemm_fwd_s + lt.attention_fwd_s + lt.elementwise_fwd_s;
  lt.backward_s = linear_bwd + attention_bwd + elementwise_bwd;

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
// Fair shares are not all that sharing costs (Note [Core sharing] in
// host_profile.h): compute runs the profile's slowdown times slower, and
// each blocking message (a TP all-reduce round, a pipeline receive, the DP
// all-reduce, the world's norm and loss all-reduces) waits a hand-off for
// its peer to be scheduled, in wall time without a core, as calibrated by
// `kiln bench handoff` at this many ranks per core.
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
  const ComputeRates& r = hp.rates(st.threads_per_rank);
  st.oversubscription =
      static_cast<double>(st.ranks_per_host * st.threads_per_rank) / std::max(1, hp.cores);
  // Note [Core sharing] (host_profile.h): what ranks sharing cores lose
  // beyond fair shares, as calibrated; a lone rank shares with no one.
  st.layer = host_layer_time(c, st.threads_per_rank);
  if (st.ranks_per_host > 1) {
    // Note [Lockstep partners]: tensor-parallel ranks meet their partner
    // every layer half; the others run as independent ranks between waits.
    // Note [Work between meetings]: the pairs' slowdown at what a layer half
    // computes between two all-reduces, on average over forward and backward.
    if (l.tp > 1) {
      st.tp_work_between_messages_s = (st.layer.forward_s + st.layer.backward_s) / 4;
      st.sharing_slowdown = hp.sharing_slowdown(st.oversubscription, st.tp_work_between_messages_s);
    } else {
      st.sharing_slowdown = hp.independent_slowdown(st.oversubscription);
    }
    // Note [Pipeline hand-off] (host_profile.h): a TP collective inside a
    // pipeline stage waits as long as the lockstep pairs' do.
    st.handoff_per_message_s = hp.handoff_s(st.oversubscription);
  }
  const double slowdown = st.sharing_slowdown;
  const double handoff = st.handoff_per_message_s;
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
  const double embed_fwd = r.embedding_fwd.at(width);
  const double embed_bwd = r.embedding_bwd.at(width);
  const double loss_fwd =
      r.linear_fwd.at(s.tokens, vocab, s.h) + r.layer_norm_fwd.at(width) + r.loss_fwd.at(logits);
  const double loss_bwd =
      r.linear_bwd.at(s.tokens, vocab, s.h) + r.layer_norm_bwd.at(width) + r.loss_bwd.at(logits);
  // TP: the embedding's output and the head's input gradient are all-reduced;
  // the vocabulary-parallel cross-entropy all-reduces a max per token, then
  // the sum and the target logit together (kiln/parallel/tensor/collectives.cc).
  double tp_embed = 0, tp_loss_fwd = 0, tp_loss_bwd = 0;
  if (l.tp > 1) {
    tp_embed = comm::ring_allreduce_s(kFloat * width, l.tp, shm);
    tp_loss_fwd = comm::ring_allreduce_s(kFloat * s.tokens, l.tp, shm) +
                  comm::ring_allreduce_s(2 * kFloat * s.tokens, l.tp, shm);
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
  // A receiver that slept through its input's arrival waits to be scheduled.
  sim.p2p_latency_s = p > 1 ? pp_link.alpha_s + handoff : 0;
  sim.ranks_per_device = static_cast<int>(l.tp * l.dp);
  sim.threads_per_rank = st.threads_per_rank;
  sim.cores = hp.cores;
  // Note [Slowdown at the moment's sharing] (pipeline_sim.h): the calibrated
  // slowdown grows with the ranks per core (cache, memory bus, the vCPUs'
  // sibling threads), and a pipeline's fill and drain leave fewer ranks
  // runnable than the steady state's every rank: 8 ranks of PP 4 × DP 2 on 2
  // cores run 4 per core only in the middle of a step. Pricing the whole
  // step at 4 per core put 1×4×2 20-26% slow in the sittings of sessions 13
  // and 17; at the moment's count it is within 12% in all three recorded
  // sittings (docs/plan.md "Session 17").
  if (st.ranks_per_host > 1 && slowdown > 0) {
    const double work = st.tp_work_between_messages_s;
    const bool tp = l.tp > 1;
    // The simulation counts every stage's ranks against one host's cores; a
    // pipeline across hosts never shares more than the steady state does.
    const double most = st.oversubscription;
    sim.relative_slowdown = [&hp, work, tp, slowdown, most](double k) {
      k = std::min(k, most);
      return (tp ? hp.sharing_slowdown(k, work) : hp.independent_slowdown(k)) / slowdown;
    };
  }
  sim.forward_wait_s = sim.forward_s;
  sim.backward_wait_s = sim.forward_s;
  st.stage_forward_s.assign(static_cast<size_t>(p), 0);
  st.stage_p2p_bytes.assign(static_cast<size_t>(p), 0);
  st.stage_backward_s.assign(static_cast<size_t>(p), 0);
  std::vector<double> stage_tp(static_cast<size_t>(p), 0), stage_p2p(static_cast<size_t>(p), 0);
  std::vector<double> stage_wait(static_cast<size_t>(p), 0);
  // Blocking messages of one TP collective: kiln::comm's small-message
  // all-reduce takes log2(n) exchange rounds (one for a pair).
  const double tp_rounds = collective_rounds(l.tp);
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
      // TP collectives that block the rank: 2 per layer each way, the
      // embedding's, and the parallel loss's 2 forward and the head's 1 backward.
      double fwd_messages = l.tp > 1 ? 2 * chunk_layers : 0;
      double bwd_messages = fwd_messages;
      if (j == 0) {
        fwd += embed_fwd + tp_embed;
        bwd += embed_bwd;
        tp += tp_embed;
        fwd_messages += l.tp > 1 ? 1 : 0;
      }
      if (j == last) {
        fwd += loss_fwd + tp_loss_fwd;
        bwd += loss_bwd + tp_loss_bwd;
        tp += tp_loss_fwd + tp_loss_bwd;
        fwd_messages += l.tp > 1 ? 2 : 0;
        bwd_messages += l.tp > 1 ? 1 : 0;
      }
      st.stage_p2p_bytes[static_cast<size_t>(d)] +=
          mb * kFloat * width * ((j < last ? 1 : 0) + (j > 0 ? 1 : 0));
      if (j < last) sends += p2p;  // the activation forward
      if (j > 0) sends += p2p;     // the gradient backward
      fwd += j < last ? p2p : 0;
      bwd += j > 0 ? p2p : 0;
      const double fwd_wait = fwd_messages * tp_rounds * handoff;
      const double bwd_wait = bwd_messages * tp_rounds * handoff;
      sim.forward_s[static_cast<size_t>(d)][static_cast<size_t>(k)] = slowdown * fwd;
      sim.backward_s[static_cast<size_t>(d)][static_cast<size_t>(k)] = slowdown * bwd;
      sim.forward_wait_s[static_cast<size_t>(d)][static_cast<size_t>(k)] = fwd_wait;
      sim.backward_wait_s[static_cast<size_t>(d)][static_cast<size_t>(k)] = bwd_wait;
      st.stage_forward_s[static_cast<size_t>(d)] += slowdown * fwd + fwd_wait;
      st.stage_backward_s[static_cast<size_t>(d)] += slowdown * bwd + bwd_wait;
      stage_tp[static_cast<size_t>(d)] += slowdown * tp;
      stage_p2p[static_cast<size_t>(d)] += slowdown * sends;
      stage_wait[static_cast<size_t>(d)] += fwd_wait + bwd_wait;
    }
  }

  // DP: each stage's gradients, all-reduced over its DP group once the
  // stage's last backward is done (kiln::ddp overlaps buckets with that
  // backward, but on a shared host the copies compete for the same cores).
  std::vector<double> dp_tail(static_cast<size_t>(p), 0), dp_wait(static_cast<size_t>(p), 0);
  double max_params = 0;
  for (int d = 0; d < p; ++d) {
    const double params = stage_params_per_gpu(c, d);
    max_params = std::max(max_params, params);
    if (l.dp > 1) {
      dp_tail[static_cast<size_t>(d)] =
          slowdown * comm::ring_allreduce_s(kFloat * params, l.dp, dp_link);
      dp_wait[static_cast<size_t>(d)] = collective_rounds(l.dp) * handoff;
    }
  }

  // The pipeline alone, then with the DP tails: the difference is the
  // exposed DP time.
  KILN_ASSIGN_OR_RETURN(PipelineSimResult bare, simulate_pipeline(sim));
  sim.tail_s = dp_tail;
  sim.tail_wait_s = dp_wait;
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
  const double work = st.stage_forward_s[ss] + st.stage_backward_s[ss] - stage_wait[ss];
  double compute = mb * share * (work - stage_tp[ss] - stage_p2p[ss]);
  double tp_comm = mb * share * stage_tp[ss];
  double pp_comm = mb * share * stage_p2p[ss];
  double handoffs = mb * stage_wait[ss];
  const double ideal = compute + tp_comm + pp_comm + handoffs;
  // A shared host can beat the steady-state estimate of the slowest stage
  // (others idle while it works): then the components shrink in proportion.
  if (ideal > bare.makespan_s && ideal > 0) {
    const double f = bare.makespan_s / ideal;
    compute *= f;
    tp_comm *= f;
    pp_comm *= f;
    handoffs *= f;
  }
  st.compute_s = compute;
  st.tp_comm_s = tp_comm;
  st.pp_comm_s = pp_comm;
  st.handoff_s = handoffs;
  st.pp_bubble_s = std::max(0.0, bare.makespan_s - ideal);
  st.dp_comm_s = st.pipeline.makespan_s - bare.makespan_s;

  // Clipping agrees on the global gradient norm (a scalar all-reduce over
  // every rank), then all ranks update their parameters at once: compute
  // shared as in the steady state, memory traffic bounded by the host's
  // aggregate bandwidth.
  const double world = static_cast<double>(l.tp * l.pp * l.dp);
  const double norm_sync = comm::ring_allreduce_s(8, static_cast<std::int64_t>(world), shm);
  // Tensors of the slowest stage: its layers', plus the embedding, the final
  // norm and the head where it holds them.
  double tensors = st.stage_layers[ss] * tensors_per_layer(m);
  if (ss == 0) tensors += 1;
  if (ss + 1 == static_cast<size_t>(p)) tensors += 3;
  const double one = r.optimizer_per_tensor.at(tensors) + max_params * r.optimizer_param_s;
  // Two blocking world collectives per step: the clipping norm and the
  // reported loss.
  const double world_waits = 2 * collective_rounds(static_cast<std::int64_t>(world)) * handoff;
  st.optimizer_s = slowdown * (norm_sync + one * share) + (st.ranks_per_host > 1 ? world_waits : 0);

  st.step_s = st.pipeline.makespan_s + st.optimizer_s;
  st.bubble_formula = static_cast<double>(p - 1) / (static_cast<double>(v) * mb);
  st.bubble_fraction = ideal > 0 ? st.pp_bubble_s / ideal : 0;
  return st;
}

}  // namespace kiln::plan
