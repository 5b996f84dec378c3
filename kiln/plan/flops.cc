#include "kiln/plan/flops.h"

#include "kiln/plan/stages.h"

namespace kiln::plan {

ParamCount count_params(const ModelSpec& m) {
  const double h = static_cast<double>(m.hidden);
  const double kvd = static_cast<double>(m.kv_dim());
  const double f = static_cast<double>(m.ffn_hidden);
  const double bias = m.bias ? 1.0 : 0.0;
  ParamCount p;
  p.attention = 2 * h * h + 2 * h * kvd + bias * (2 * h + 2 * kvd);
  p.ffn = (m.glu ? 3 : 2) * h * f + bias * ((m.glu ? 2 : 1) * f + h);
  // LayerNorm has a weight and a bias; RMSNorm (the bias-free family) only a weight.
  p.norms = 2 * (m.bias ? 2 : 1) * h;
  p.per_layer = p.attention + p.ffn + p.norms;
  p.embedding = static_cast<double>(m.vocab) * h + (m.learned_positions ? m.seq_len * h : 0.0);
  p.output = m.tied_embeddings ? 0.0 : static_cast<double>(m.vocab) * h;
  p.final_norm = (m.bias ? 2 : 1) * h;
  p.total = p.per_layer * static_cast<double>(m.layers) + p.embedding + p.output + p.final_norm;
  return p;
}

double stage_params_per_gpu(const PlanConfig& c, std::int64_t stage) {
  const ParamCount p = count_params(c.model);
  const auto& l = c.layout;
  const double t = static_cast<double>(l.tp);
  const double layers = static_cast<double>(stage_layers(c)[static_cast<size_t>(stage)]);
  // Norm weights are replicated across TP ranks; matrices are split.
  double params = layers * ((p.attention + p.ffn) / t + p.norms);
  if (stage == 0) params += p.embedding / t;
  if (stage == l.pp - 1) {
    params += p.final_norm;
    if (!c.model.tied_embeddings) {
      params += p.output / t;
    } else if (l.pp > 1) {
      params += static_cast<double>(c.model.vocab * c.model.hidden) / t;
    }
  }
  return params;
}

double layer_forward_flops_per_token(const ModelSpec& m) {
  const double h = static_cast<double>(m.hidden);
  const double kvd = static_cast<double>(m.kv_dim());
  const double f = static_cast<double>(m.ffn_hidden);
  const double matmul_params = 2 * h * h + 2 * h * kvd + (m.glu ? 3 : 2) * h * f;
  return 2 * matmul_params + 4 * static_cast<double>(m.seq_len) * h;
}

StepFlops step_flops(const ModelSpec& m, const LayoutSpec& l) {
  const double tokens = static_cast<double>(l.global_batch) * static_cast<double>(m.seq_len);
  const double h = static_cast<double>(m.hidden);
  const double layer_fwd = layer_forward_flops_per_token(m) * static_cast<double>(m.layers);
  const double logits_fwd = 2 * static_cast<double>(m.vocab) * h;
  StepFlops out;
  out.model = 3 * tokens * (layer_fwd + logits_fwd);
  double recompute = 0;
  if (l.recompute == Recompute::kFull) recompute = layer_fwd;
  if (l.recompute == Recompute::kSaveQkv) {
    // Everything but the Q, K and V projections.
    const double qkv = 2 * h * (h + 2 * static_cast<double>(m.kv_dim()));
    recompute = layer_fwd - qkv * static_cast<double>(m.layers);
  }
  if (l.recompute == Recompute::kSelective) {
    // Korthikanti et al. 2022 §5: only QKᵀ, softmax, dropout and attention·V.
    recompute = 4 * static_cast<double>(m.seq_len) * h * static_cast<double>(m.layers);
  }
  out.hardware = out.model + tokens * recompute;
  return out;
}

double megatron_flops(const ModelSpec& m, std::int64_t global_batch, bool full_recompute) {
  const double B = static_cast<double>(global_batch);
  const double s = static_cast<double>(m.seq_len);
  const double l = static_cast<double>(m.layers);
  const double h = static_cast<double>(m.hidden);
  const double V = static_cast<double>(m.vocab);
  if (full_recompute) return 96 * B * s * l * h * h * (1 + s / (6 * h) + V / (16 * l * h));
  return 72 * B * s * l * h * h * (1 + s / (6 * h) + V / (12 * l * h));
}

}  // namespace kiln::plan
