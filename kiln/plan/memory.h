// Memory per GPU of the first pipeline stage (the one holding the most
// activations under 1F1B) and whether it fits.
//
// Model states follow the ZeRO paper (Rajbhandari et al. 2020, §3.1): mixed
// precision Adam keeps 2 bytes of bf16 weights, 2 of gradients and 12 of
// optimizer state (fp32 master weights, momentum, variance) per parameter;
// ZeRO stage 1 shards the optimizer state over DP, stage 2 also gradients,
// stage 3 also weights. Activations follow Korthikanti et al. 2022, "Reducing
// Activation Recomputation in Large Transformer Models", §4.
#pragma once

#include <cstdint>

#include "kiln/plan/config.h"

namespace kiln::plan {

// Bytes of activations one transformer layer stores for one micro-batch on
// one GPU, for the layout's TP degree, sequence parallelism, recompute mode
// and attention kernel. For a GPT layer with dropout and unfused attention it
// is exactly Korthikanti's:
//   no parallelism:          s·b·h·(34 + 5·a·s/h)
//   tensor parallel t:       s·b·h·(10 + 24/t + 5·a·s/(h·t))
//   tensor + sequence par.:  s·b·h/t·(34 + 5·a·s/h)
//   selective recompute+SP:  s·b·h·34/t
//   full recompute:          2·s·b·h (/t with SP)
// It generalises the 34 term per component (GQA K/V width, gated FFN width,
// no dropout masks) and drops the 5·a·s/h term for FlashAttention, which keeps
// only a per-row softmax statistic.
double activation_bytes_per_layer(const ModelSpec& model, const LayoutSpec& layout);

// Micro-batches whose activations stage 0 holds at its peak: p under 1F1B,
// p·(1 + (p-1)/(p·v)) interleaved (Korthikanti §4.2.3), 1 without a pipeline.
double micro_batches_in_flight(const LayoutSpec& layout);

struct MemoryBreakdown {
  double weights = 0;
  double gradients = 0;
  double optimizer = 0;
  double activations = 0;
  double buffers = 0;  // communication buffers, gathered ZeRO-3 layers, logits, workspaces
  double total = 0;
  double capacity = 0;  // HBM of the GPU
  bool fits = false;
  double used_fraction = 0;  // total / capacity
};

MemoryBreakdown memory_per_gpu(const PlanConfig& config);

}  // namespace kiln::plan
