// Parameter counts and FLOPs of a decoder-only transformer.
//
// Counting convention (Narayanan et al. 2021, "Efficient Large-Scale Language
// Model Training on GPU Clusters", §5.1 and appendix): a multiply-add is two
// FLOPs; attention scores are counted over the full s×s matrix even when the
// mask is causal; backward costs twice the forward. Model FLOPs exclude
// recomputation; hardware FLOPs include it.
#pragma once

#include <cstdint>

#include "kiln/plan/config.h"

namespace kiln::plan {

struct ParamCount {
  double attention = 0;  // per layer: Q, K, V, O (+ biases)
  double ffn = 0;        // per layer
  double norms = 0;      // per layer
  double per_layer = 0;  // attention + ffn + norms
  double embedding = 0;  // token (+ learned position) embeddings
  double output = 0;     // untied output projection; 0 when tied
  double final_norm = 0;
  double total = 0;
};

ParamCount count_params(const ModelSpec& model);

// Parameters one GPU holds for pipeline stage `stage` (0-based), tensor
// parallel shards applied, before any ZeRO sharding. Stage 0 holds the
// embedding; the last stage holds the final norm and the output layer (a copy
// of the embedding when tied and pp > 1, as Megatron does).
double stage_params_per_gpu(const PlanConfig& config, std::int64_t stage);

// Forward FLOPs per token of one transformer layer: 2 per matmul parameter
// plus the attention core (QKᵀ and attention·V): 4·s·h.
double layer_forward_flops_per_token(const ModelSpec& model);

struct StepFlops {
  double model = 0;     // useful FLOPs per step (3 × forward), all GPUs together
  double hardware = 0;  // model + recomputation
};

StepFlops step_flops(const ModelSpec& model, const LayoutSpec& layout);

// The published closed form for GPT models with 4h FFN and no biases
// (Narayanan et al. 2021, eq. 3 without the recompute pass):
//   72·B·s·l·h²·(1 + s/(6h) + V/(12·l·h)).
// With full recompute (eq. 3 as printed): 96·B·s·l·h²·(1 + s/(6h) + V/(16·l·h)).
double megatron_flops(const ModelSpec& model, std::int64_t global_batch, bool full_recompute);

}  // namespace kiln::plan
