// OverlappedLinear: a Linear layer whose backward hands its weight gradient
// to data parallelism one GEMM earlier (an opt-in replacement for
// torch::nn::Linear under kiln::ddp; Note [A Linear's weight gradient first]).
//
// y = x W^T + b, computed as torch::nn::Linear does (addmm on 2-D input).
// Backward computes the same three products as LibTorch's addmm backward
// (dW = g^T x, db = sum_rows(g), dX = g W) but in two autograd nodes, the
// weight's first: the weight and bias gradients are accumulated, and DDP's
// hooks on them fire, before the input gradient's GEMM runs. With
// weight_slices = k > 1 the weight is held as k row blocks (parameters
// "weight_0" .. "weight_{k-1}", together the [out, in] weight), each one's
// gradient computed in its own node, the first rows first, so a large
// gradient leaves in pieces while the rest is still being computed (meant
// for the first layer, whose gradient is the last of the step).
//
// Parameters with weight_slices = 1 are nn::Linear's ("weight", "bias",
// same shapes and initialisation), so state and optimizers carry over.
// Gradients equal nn::Linear's bit for bit with one slice (the same
// products in the same order); sliced, each block is a GEMM of its rows
// (OverlappedLinear.* in overlapped_linear_test.cc says how close).
// Not thread-safe beyond what a torch::nn::Module is; CPU or any device
// LibTorch's mm runs on.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/torch.h>

namespace kiln::ddp {

struct OverlappedLinearOptions {
  bool bias = true;
  int weight_slices = 1;  // >= 1; at most out_features
};

class OverlappedLinearImpl : public torch::nn::Module {
 public:
  OverlappedLinearImpl(std::int64_t in_features, std::int64_t out_features,
                       OverlappedLinearOptions options = {});

  // input: [..., in_features] -> [..., out_features].
  torch::Tensor forward(const torch::Tensor& input);

  // The [out, in] weight: the parameter itself with one slice, the row
  // blocks joined (a copy, no autograd history) otherwise.
  torch::Tensor weight() const;
  // Undefined without a bias.
  const torch::Tensor& bias() const { return bias_; }
  const std::vector<torch::Tensor>& weight_slices() const { return slices_; }
  // Sets the weight ([out, in]) and bias ([out], or undefined when the
  // layer has none) in place, e.g. from a torch::nn::Linear.
  void copy_from(const torch::Tensor& weight, const torch::Tensor& bias);

 private:
  std::int64_t in_features_, out_features_;
  std::vector<torch::Tensor> slices_;     // row blocks, in row order
  std::vector<std::int64_t> first_rows_;  // of each block
  torch::Tensor bias_;
};

TORCH_MODULE(OverlappedLinear);

}  // namespace kiln::ddp
