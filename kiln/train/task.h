// Task: a model plus how a collated batch becomes its loss. Two reference
// workloads: a CNN classifier for Fashion-MNIST (image + label columns) and a
// GPT-style decoder for next-token prediction (tokens column).
#pragma once

#include <torch/torch.h>

#include <memory>

#include "kiln/base/status.h"
#include "kiln/data/loader.h"
#include "kiln/train/train_config.h"

namespace kiln::train {

// Sums over an evaluation, reduced across ranks before use.
struct EvalSums {
  double loss_sum = 0;  // per-sample (or per-token) loss summed
  double correct = 0;   // classification only
  double count = 0;     // samples (or tokens)
};

class Task {
 public:
  virtual ~Task() = default;
  virtual std::shared_ptr<torch::nn::Module> module() = 0;
  // The mean loss over the batch. InvalidArgument naming the column if the
  // batch does not have the fields this task reads.
  virtual Result<torch::Tensor> loss(const data::Batch& batch) = 0;
  // Adds this batch's summed loss (and correct predictions) to `sums`; no grad.
  virtual Status evaluate(const data::Batch& batch, EvalSums* sums) = 0;
  virtual bool classification() const = 0;
  // Inference (`kiln serve`): the classifier takes pixels 0..255 as float
  // [B, 1, 28, 28] and returns logits [B, classes]; the decoder takes int64
  // tokens [B, T] (T <= model.seq_len) and returns logits [B, T, vocab].
  // Call under NoGradGuard with the module in eval mode.
  virtual torch::Tensor infer(const torch::Tensor& input) = 0;
};

// How make_task fills the model's parameters.
enum class ParamInit {
  kRandom,  // the model's own initialisation, from the current torch seed
  // Allocated and left unwritten, for a caller that copies every parameter
  // in next (kiln serve, from a checkpoint): Note [Layers without random
  // initial values]. The CNN's layers; the GPT is initialised regardless.
  kNone,
};

// Pixel statistics of the Fashion-MNIST training split.
inline constexpr double kPixelMean = 0.2860, kPixelStd = 0.3530;

// The CNN's input as it trains on it: pixels 0..255 (float32 [B, 1, 28, 28])
// normalized by kPixelMean and kPixelStd: (pixel / 255 - mean) / std. What
// ImageClassification::infer applies before the module's forward; a served
// forward of the same weights (kiln/serve/blocked_cnn.h, onednn_cnn.h)
// applies it too.
torch::Tensor normalize_pixels(const torch::Tensor& pixels);

// Builds the model for `config` (with the current torch seed, for kRandom).
std::unique_ptr<Task> make_task(const ModelConfig& config, ParamInit init = ParamInit::kRandom);

}  // namespace kiln::train
