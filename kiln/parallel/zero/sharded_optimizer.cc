#include "kiln/parallel/zero/sharded_optimizer.h"

#include <algorithm>
#include <cmath>

namespace kiln::parallel::zero {

std::size_t ShardedOptimizer::add_shard(std::int64_t numel) {
  shards_.push_back(Shard{.numel = numel});
  largest_ = std::max(largest_, numel);
  return shards_.size() - 1;
}

void ShardedOptimizer::ensure_state(Shard& s) {
  if (options_.kind == OptimizerKind::kAdamW) {
    if (!s.exp_avg.defined()) s.exp_avg = torch::zeros({s.numel}, torch::kFloat32);
    if (!s.exp_avg_sq.defined()) s.exp_avg_sq = torch::zeros({s.numel}, torch::kFloat32);
  } else if (options_.momentum != 0 && !s.momentum.defined()) {
    s.momentum = torch::zeros({s.numel}, torch::kFloat32);
  }
}

torch::Tensor ShardedOptimizer::scratch(int which, std::int64_t numel) {
  torch::Tensor& t = scratch_[which];
  if (!t.defined()) t = torch::empty({largest_}, torch::kFloat32);
  return t.narrow(0, 0, numel);
}

std::size_t ShardedOptimizer::scratch_bytes() const {
  std::size_t b = 0;
  for (const torch::Tensor& t : scratch_) {
    if (t.defined()) b += t.nbytes();
  }
  return b;
}

void ShardedOptimizer::step(std::size_t i, torch::Tensor& param, const torch::Tensor& grad_in) {
  torch::NoGradGuard no_grad;
  Shard& s = shards_[i];
  ensure_state(s);
  const OptimizerOptions& o = options_;
  torch::Tensor grad = grad_in;
  if (grad.scalar_type() != torch::kFloat32) grad = scratch(1, s.numel).copy_(grad_in);
  if (o.kind == OptimizerKind::kAdamW) {
    // torch/csrc/api/src/optim/adamw.cpp, in the same order of operations.
    if (o.weight_decay != 0) param.mul_(1 - o.lr * o.weight_decay);
    const double bias_correction1 = 1 - std::pow(o.beta1, static_cast<double>(steps_));
    const double bias_correction2 = 1 - std::pow(o.beta2, static_cast<double>(steps_));
    s.exp_avg.mul_(o.beta1).add_(grad, 1 - o.beta1);
    s.exp_avg_sq.mul_(o.beta2).addcmul_(grad, grad, 1 - o.beta2);
    torch::Tensor denom = scratch(0, s.numel);
    torch::sqrt_out(denom, s.exp_avg_sq);
    denom.div_(std::sqrt(bias_correction2)).add_(o.eps);
    param.addcdiv_(s.exp_avg, denom, -o.lr / bias_correction1);
    return;
  }
  // torch/csrc/api/src/optim/sgd.cpp (dampening 0, no nesterov).
  torch::Tensor d_p = grad;
  if (o.weight_decay != 0) d_p = d_p.add(param, o.weight_decay);
  if (o.momentum != 0) {
    if (!s.momentum_ready) {
      s.momentum.copy_(d_p);
      s.momentum_ready = true;
    } else {
      s.momentum.mul_(o.momentum).add_(d_p, 1.0);
    }
    d_p = s.momentum;
  }
  param.add_(d_p, -o.lr);
}

std::vector<std::pair<const char*, torch::Tensor*>> ShardedOptimizer::state(std::size_t i) {
  Shard& s = shards_[i];
  ensure_state(s);
  if (options_.kind == OptimizerKind::kAdamW) return {{"exp_avg", &s.exp_avg}, {"exp_avg_sq", &s.exp_avg_sq}};
  if (options_.momentum != 0) return {{"momentum", &s.momentum}};
  return {};
}

std::size_t ShardedOptimizer::state_bytes() const {
  std::size_t b = 0;
  for (const Shard& s : shards_) {
    for (const torch::Tensor* t : {&s.exp_avg, &s.exp_avg_sq, &s.momentum}) {
      if (t->defined()) b += t->nbytes();
    }
  }
  return b;
}

}  // namespace kiln::parallel::zero
