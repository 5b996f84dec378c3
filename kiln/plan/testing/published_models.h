// Models of published runs that several planner tests use, spelled once.
#pragma once

#include "kiln/plan/config.h"

namespace kiln::plan::testing {

// Llama 2 70B: 80 layers of d 8192, grouped-query attention (8 KV heads),
// SwiGLU FFN of 28672, sequence 4096, vocabulary 32000 (Touvron et al. 2023).
inline ModelSpec llama2_70b() {
  ModelSpec m;
  m.layers = 80;
  m.hidden = 8192;
  m.heads = 64;
  m.kv_heads = 8;
  m.ffn_hidden = 28672;
  m.glu = true;
  m.seq_len = 4096;
  m.vocab = 32000;
  m.set_family_defaults();
  return m;
}

}  // namespace kiln::plan::testing
