// The optimizers `kiln train` builds from [optim]: LibTorch's for replicated
// parameters, the sharded one's options for [parallel] strategy = zero*.
#pragma once

#include <memory>
#include <vector>

#include <torch/torch.h>

#include "kiln/parallel/zero/sharded_data_parallel.h"
#include "kiln/train/train_config.h"

namespace kiln::train {

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const OptimConfig& o,
                                                        std::vector<torch::Tensor> params);
void set_learning_rate(torch::optim::Optimizer& opt, double lr);

// [parallel] strategy = "zero1" | "zero2" | "zero3" as the sharded wrapper's
// options; the optimizer is the sharded one, with [optim]'s settings.
parallel::zero::ZeroOptions zero_options(const TrainConfig& c);

}  // namespace kiln::train
