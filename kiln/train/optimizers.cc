#include "kiln/train/optimizers.h"

#include "kiln/train/train_data.h"

namespace kiln::train {

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const OptimConfig& o,
                                                        std::vector<torch::Tensor> params) {
  if (o.kind == OptimizerKind::kSgd) {
    return std::make_unique<torch::optim::SGD>(
        params, torch::optim::SGDOptions(o.lr).momentum(o.momentum).weight_decay(o.weight_decay));
  }
  return std::make_unique<torch::optim::AdamW>(
      params, torch::optim::AdamWOptions(o.lr).betas({o.beta1, o.beta2}).weight_decay(o.weight_decay));
}

void set_learning_rate(torch::optim::Optimizer& opt, double lr) {
  for (auto& group : opt.param_groups()) group.options().set_lr(lr);
}

parallel::zero::ZeroOptions zero_options(const TrainConfig& c) {
  parallel::zero::ZeroOptions z;
  z.stage = c.parallel.strategy == Strategy::kZero1 ? 1 : c.parallel.strategy == Strategy::kZero2 ? 2 : 3;
  z.precision = c.parallel.precision == Precision::kBf16 ? parallel::zero::Precision::kBf16
                                                         : parallel::zero::Precision::kFp32;
  z.min_unit_params = c.parallel.min_unit_params;
  z.prefetch = c.parallel.prefetch;
  z.timeout = kCollectiveTimeout;
  const OptimConfig& o = c.optim;
  z.optimizer.kind = o.kind == OptimizerKind::kSgd ? parallel::zero::OptimizerKind::kSgd
                                                   : parallel::zero::OptimizerKind::kAdamW;
  z.optimizer.lr = o.lr;
  z.optimizer.beta1 = o.beta1;
  z.optimizer.beta2 = o.beta2;
  z.optimizer.weight_decay = o.weight_decay;
  z.optimizer.momentum = o.kind == OptimizerKind::kSgd ? o.momentum : 0;
  return z;
}

}  // namespace kiln::train
