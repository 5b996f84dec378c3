// Rotary position embedding (RoFormer, Su et al. 2021): rotates pairs of
// query/key channels by position-dependent angles, so attention sees
// relative positions. Shared by the GPT of task.cc and its tensor/pipeline
// parallel form (gpt_3d.cc), which must compute the same.
#pragma once

#include <cmath>
#include <limits>

#include <torch/torch.h>

namespace kiln::train {

struct RotaryTables {
  torch::Tensor cos, sin;  // [seq_len, head_dim], float32
};

inline RotaryTables rotary_tables(int head_dim, int seq_len) {
  torch::Tensor inv = torch::pow(10000.0, -torch::arange(0, head_dim, 2, torch::kFloat64) / head_dim);
  torch::Tensor angles = torch::outer(torch::arange(seq_len, torch::kFloat64), inv);
  angles = torch::cat({angles, angles}, -1).to(torch::kFloat32);
  return {angles.cos(), angles.sin()};
}

inline torch::Tensor rotate(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  auto halves = x.chunk(2, -1);
  torch::Tensor rotated = torch::cat({-halves[1], halves[0]}, -1);
  return x * cos + rotated * sin;
}

// Causal self-attention of q, k, v [B, H, T, hd] -> [B, T, H * hd].
inline torch::Tensor causal_attention(torch::Tensor q, torch::Tensor k, const torch::Tensor& v,
                                      const RotaryTables* rotary, double dropout, bool training) {
  const auto B = q.size(0), H = q.size(1), T = q.size(2), hd = q.size(3);
  if (rotary != nullptr) {
    torch::Tensor cos = rotary->cos.narrow(0, 0, T).to(q.scalar_type());
    torch::Tensor sin = rotary->sin.narrow(0, 0, T).to(q.scalar_type());
    q = rotate(q, cos, sin);
    k = rotate(k, cos, sin);
  }
  torch::Tensor att = torch::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(hd));
  torch::Tensor mask = torch::ones({T, T}, torch::kBool).triu(1);
  att = torch::softmax(att.masked_fill(mask, -std::numeric_limits<float>::infinity()), -1);
  att = torch::dropout(att, dropout, training);
  return torch::matmul(att, v).transpose(1, 2).contiguous().view({B, T, H * hd});
}

}  // namespace kiln::train
