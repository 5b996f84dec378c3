#include "kiln/ddp/overlapped_linear.h"

#include <cmath>

#include <fmt/format.h>

namespace kiln::ddp {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Note [A Linear's weight gradient first]: LibTorch's Linear is one addmm,
// whose backward node computes the input's and the weight's gradients
// together; the weight's AccumulateGrad (and DDP's hook on it) runs only
// after both GEMMs. Here the forward builds two kinds of node: OutputOf
// computes y (and, in backward, only dX = g W), and one WeightRowsGrad per
// row block passes y through unchanged (in backward: g on to OutputOf, and
// dW rows = g[:, rows]^T x, db = sum_rows(g)). The WeightRowsGrad nodes are
// made after OutputOf, so autograd's ready queue (later-made nodes first,
// AccumulateGrad before all) runs each of them and accumulates its block
// before OutputOf's GEMM starts: a layer's weight gradient is ready one
// GEMM earlier, and a first layer's (whose input needs no gradient, so no
// dX at all) leaves block by block. The products are LibTorch's own
// (mm_mat1_backward / mm_mat2_backward for a row-major input and a
// transposed weight; the bias summed as the engine's sum_to does).
struct OutputOf : torch::autograd::Function<OutputOf> {
  // weight and bias come detached (their gradients are WeightRowsGrad's);
  // bias is an empty tensor for a layer without one.
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& input,
                               const torch::Tensor& weight, const torch::Tensor& bias) {
    ctx->save_for_backward({weight});
    return bias.numel() > 0 ? torch::addmm(bias, input, weight.t()) : input.mm(weight.t());
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const torch::Tensor weight = ctx->get_saved_variables()[0];
    return {grads[0].mm(weight), torch::Tensor(), torch::Tensor()};
  }
};

struct WeightRowsGrad : torch::autograd::Function<WeightRowsGrad> {
  // input comes detached (its gradient is OutputOf's); bias is an empty
  // tensor in all but one block's node (autograd takes no undefined inputs).
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& output,
                               const torch::Tensor& input, const torch::Tensor& weight_rows,
                               const torch::Tensor& bias, std::int64_t first_row) {
    ctx->save_for_backward({input});
    ctx->saved_data["first_row"] = first_row;
    ctx->saved_data["rows"] = weight_rows.size(0);
    ctx->saved_data["bias"] = bias.numel() > 0;
    return output;  // returned as a view with this node as its history
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const torch::Tensor& g = grads[0];
    const torch::Tensor input = ctx->get_saved_variables()[0];
    const std::int64_t first = ctx->saved_data["first_row"].toInt();
    const std::int64_t rows = ctx->saved_data["rows"].toInt();
    const torch::Tensor g_rows = rows == g.size(1) ? g : g.narrow(1, first, rows);
    torch::Tensor bias_grad;
    if (ctx->saved_data["bias"].toBool()) bias_grad = g.sum(0);
    return {g, torch::Tensor(), g_rows.t().mm(input), bias_grad, torch::Tensor()};
  }
};

}  // namespace

OverlappedLinearImpl::OverlappedLinearImpl(std::int64_t in_features, std::int64_t out_features,
                                           OverlappedLinearOptions options)
    : in_features_(in_features), out_features_(out_features) {
  TORCH_CHECK(in_features > 0 && out_features > 0, "OverlappedLinear(", in_features, ", ",
              out_features, "): features must be positive");
  TORCH_CHECK(options.weight_slices >= 1 && options.weight_slices <= out_features,
              "OverlappedLinear: weight_slices ", options.weight_slices, " must be in [1, ",
              out_features, "] (rows of the weight)");
  torch::NoGradGuard no_grad;
  // torch::nn::Linear's initialisation, drawn for the whole weight at once.
  torch::Tensor weight = torch::empty({out_features, in_features});
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  const std::int64_t k = options.weight_slices;
  std::int64_t first = 0;
  for (std::int64_t i = 0; i < k; ++i) {
    const std::int64_t rows = out_features / k + (i < out_features % k ? 1 : 0);
    const std::string name = k == 1 ? "weight" : fmt::format("weight_{}", i);
    slices_.push_back(register_parameter(name, weight.narrow(0, first, rows).clone()));
    first_rows_.push_back(first);
    first += rows;
  }
  if (options.bias) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
    bias_ = register_parameter("bias", torch::empty({out_features}).uniform_(-bound, bound));
  }
}

torch::Tensor OverlappedLinearImpl::weight() const {
  if (slices_.size() == 1) return slices_[0];
  torch::NoGradGuard no_grad;
  return torch::cat(slices_);
}

void OverlappedLinearImpl::copy_from(const torch::Tensor& weight, const torch::Tensor& bias) {
  TORCH_CHECK(weight.sizes() == torch::IntArrayRef({out_features_, in_features_}),
              "OverlappedLinear::copy_from: weight of shape ", weight.sizes(), ", want [",
              out_features_, ", ", in_features_, "]");
  TORCH_CHECK(bias.defined() == bias_.defined(), "OverlappedLinear::copy_from: bias ",
              bias.defined() ? "given to a layer without one" : "missing");
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < slices_.size(); ++i) {
    slices_[i].copy_(weight.narrow(0, first_rows_[i], slices_[i].size(0)));
  }
  if (bias_.defined()) bias_.copy_(bias);
}

torch::Tensor OverlappedLinearImpl::forward(const torch::Tensor& input) {
  TORCH_CHECK(input.dim() >= 1 && input.size(-1) == in_features_, "OverlappedLinear: input of shape ",
              input.sizes(), ", want [..., ", in_features_, "]");
  const torch::Tensor x = input.dim() == 2 ? input : input.reshape({-1, in_features_});
  const torch::Tensor weight =
      slices_.size() == 1 ? slices_[0].detach() : OverlappedLinearImpl::weight();
  const torch::Tensor no_bias = torch::empty({0});
  torch::Tensor y = bias_.defined() ? OutputOf::apply(x, weight, bias_.detach())
                                    : OutputOf::apply(x, weight, no_bias);
  const torch::Tensor x_alone = x.detach();
  // Block 0 first, so its node is made last and runs first in backward;
  // the bias rides with it.
  for (std::size_t i = slices_.size(); i-- > 0;) {
    y = WeightRowsGrad::apply(y, x_alone, slices_[i],
                              i == 0 && bias_.defined() ? bias_ : no_bias, first_rows_[i]);
  }
  if (input.dim() == 2) return y;
  std::vector<std::int64_t> shape = input.sizes().vec();
  shape.back() = out_features_;
  return y.view(shape);
}

}  // namespace kiln::ddp
