// The served CNN's inference forward with its activations in oneDNN's
// blocked layout from the first convolution to the last pooling.
//
// Note [The CNN's forward in oneDNN's layout]: LibTorch's oneDNN
// convolution (what a batch of 2 or more runs, by use_mkldnn's size rule)
// takes and gives dense NCHW tensors, so each call reorders its input into
// oneDNN's blocked layout (aBcd8b on AVX2), its weight into the matching
// blocked layout, and its output back; pooling and relu then run on the
// dense output. On the 2-core Zen 3 VM the reorders were 11% of the batch
// worker's CPU (docs/perf.md, issue 20, session 14). Here the convolution
// weights are reordered once, when the model is loaded, and the batch is
// converted once on the way in: both convolutions, their relus and their
// poolings run on oneDNN tensors (LibTorch's `mkldnn` layout), and only
// the last pooling's output (64 x 7 x 7 per image) comes back to dense for
// the fully connected layers. Same model, same weights: the convolutions
// are the same oneDNN kernels and the logits equal the module's within
// float rounding (TorchModel tests: 1e-5).
// Measured (docs/perf.md, issue 20, session 15): in isolation conv2 at
// batch 20 drops from ~152 to ~110 us per image, but oneDNN's pooling costs
// ~31 vs ~13 us and the whole batched forward in the replica does not move
// (251 vs 248 us per request); at batch 1 it is slower (643 vs 560 us). So
// it is not the default (KILN_SERVE_CNN_FORWARD=module); kept selectable.
#pragma once

#include <torch/torch.h>

#include "kiln/base/status.h"
#include "kiln/serve/cnn_forward.h"

namespace kiln::serve {

class BlockedCnn {
 public:
  // From the parameters of train's CNN (conv1, conv2: 3x3, padding 1; fc1,
  // fc2), which must be float32. The convolution weights and biases are
  // copied into oneDNN tensors; the fully connected weights are used where
  // they lie (views of the module's, or oneDNN copies for
  // kBlockedFcOnednn), so the module must outlive this. FailedPrecondition:
  // a parameter missing or not float32.
  static Result<std::unique_ptr<BlockedCnn>> from_module(torch::nn::Module& cnn, CnnForward kind);

  // Logits [B, classes] (dense float32) of normalized images [B, 1, H, W]
  // (dense float32). Call under c10::InferenceMode, from one thread at a
  // time. Throws at LibTorch's boundary like the module's forward.
  torch::Tensor forward(const torch::Tensor& x) const;

 private:
  BlockedCnn() = default;
  torch::Tensor conv1_w_, conv1_b_, conv2_w_, conv2_b_;  // oneDNN tensors
  torch::Tensor fc1_w_, fc1_b_, fc2_w_, fc2_b_;
  bool fc_onednn_ = false;
};

}  // namespace kiln::serve
