#include "kiln/serve/blocked_cnn.h"

#include <ATen/ops/mkldnn_convolution.h>
#include <ATen/ops/mkldnn_linear.h>
#include <ATen/ops/mkldnn_max_pool2d.h>
#include <ATen/ops/mkldnn_reorder_conv2d_weight.h>
#include <fmt/format.h>


namespace kiln::serve {
namespace {

// The 3x3 convolutions of train's CNN: stride 1, padding 1.
constexpr std::int64_t kPadding[] = {1, 1}, kStride[] = {1, 1}, kDilation[] = {1, 1};

Result<torch::Tensor> parameter(torch::nn::Module& cnn, const std::string& name) {
  const torch::Tensor* t = cnn.named_parameters().find(name);
  if (t == nullptr) {
    return failed_precondition(fmt::format("the CNN has no parameter '{}'", name));
  }
  if (t->scalar_type() != torch::kFloat32) {
    return failed_precondition(fmt::format("the CNN's '{}' is {}, not float32", name,
                                           c10::toString(t->scalar_type())));
  }
  return t->detach();
}

// The weight in the blocked layout oneDNN's convolution asks for: done once
// here instead of in every call.
torch::Tensor blocked_conv_weight(const torch::Tensor& w) {
  return at::mkldnn_reorder_conv2d_weight(w.contiguous().to_mkldnn(), kPadding, kStride, kDilation,
                                          1);
}

// relu after a 2x2 max pooling (floor), as the module's relu_max_pool_2x2:
// relu commutes with max, so it runs on the pooled quarter.
torch::Tensor max_pool_2x2_relu(const torch::Tensor& x) {
  return at::mkldnn_max_pool2d(x, {2, 2}, {2, 2}).relu_();
}

}  // namespace

Result<std::unique_ptr<BlockedCnn>> BlockedCnn::from_module(torch::nn::Module& cnn,
                                                            CnnForward kind) {
  std::unique_ptr<BlockedCnn> b(new BlockedCnn());
  KILN_ASSIGN_OR_RETURN(torch::Tensor conv1_w, parameter(cnn, "conv1.weight"));
  KILN_ASSIGN_OR_RETURN(torch::Tensor conv1_b, parameter(cnn, "conv1.bias"));
  KILN_ASSIGN_OR_RETURN(torch::Tensor conv2_w, parameter(cnn, "conv2.weight"));
  KILN_ASSIGN_OR_RETURN(torch::Tensor conv2_b, parameter(cnn, "conv2.bias"));
  KILN_ASSIGN_OR_RETURN(b->fc1_w_, parameter(cnn, "fc1.weight"));
  KILN_ASSIGN_OR_RETURN(b->fc1_b_, parameter(cnn, "fc1.bias"));
  KILN_ASSIGN_OR_RETURN(b->fc2_w_, parameter(cnn, "fc2.weight"));
  KILN_ASSIGN_OR_RETURN(b->fc2_b_, parameter(cnn, "fc2.bias"));
  if (conv1_w.dim() != 4 || conv1_w.size(2) != 3 || conv1_w.size(3) != 3 || conv2_w.dim() != 4 ||
      conv2_w.size(2) != 3 || conv2_w.size(3) != 3) {
    return failed_precondition(fmt::format(
        "the CNN's convolutions are [{}] and [{}], not 3x3", fmt::join(conv1_w.sizes(), ", "),
        fmt::join(conv2_w.sizes(), ", ")));
  }
  try {
    c10::InferenceMode inference;
    b->conv1_w_ = blocked_conv_weight(conv1_w);
    b->conv2_w_ = blocked_conv_weight(conv2_w);
    b->conv1_b_ = conv1_b.contiguous().to_mkldnn();
    b->conv2_b_ = conv2_b.contiguous().to_mkldnn();
    b->fc_onednn_ = kind == CnnForward::kBlockedFcOnednn;
    if (b->fc_onednn_) {
      b->fc1_w_ = b->fc1_w_.contiguous().to_mkldnn();
      b->fc1_b_ = b->fc1_b_.contiguous().to_mkldnn();
    }
  } catch (const std::exception& e) {
    return failed_precondition(
        fmt::format("the CNN's weights in oneDNN's layout: {}", e.what()));
  }
  return b;
}

torch::Tensor BlockedCnn::forward(const torch::Tensor& x) const {
  torch::Tensor m = x.to_mkldnn();
  m = at::mkldnn_convolution(m, conv1_w_, conv1_b_, kPadding, kStride, kDilation, 1);
  m = max_pool_2x2_relu(m);
  m = at::mkldnn_convolution(m, conv2_w_, conv2_b_, kPadding, kStride, kDilation, 1);
  m = max_pool_2x2_relu(m);
  torch::Tensor h;
  if (fc_onednn_) {
    // A reshape of a blocked tensor reorders it to the plain layout inside.
    h = at::mkldnn_linear(m.reshape({m.size(0), -1}), fc1_w_, fc1_b_).relu_().to_dense();
  } else {
    h = torch::linear(m.to_dense().flatten(1), fc1_w_, fc1_b_).relu_();
  }
  return torch::linear(h, fc2_w_, fc2_b_);
}

}  // namespace kiln::serve
