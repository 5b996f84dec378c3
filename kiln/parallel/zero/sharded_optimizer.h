// ShardedOptimizer: AdamW and SGD (with momentum) over flat fp32 shards, one
// per unit, with the arithmetic of LibTorch's torch::optim::AdamW and
// torch::optim::SGD (1.13) element by element, so a sharded run follows the
// same trajectory as one process with the stock optimizer.
//
// State per shard: AdamW holds exp_avg and exp_avg_sq, SGD its momentum
// buffer (created on the first step, as LibTorch does). Not thread-safe.
//
// Note [Optimizer scratch]: AdamW's denominator, and a 16-bit gradient
// widened to fp32, go through one fp32 scratch of the largest shard's size,
// kept across steps. Fresh temporaries of a few MiB each came from mmap and
// page-faulted in on every step (the buffer pool's reason, Note [One block
// per unit in flight]): a bf16 step of 10.5 M parameters per rank took
// 70-170 ms. The arithmetic is LibTorch's, in the same order.
#pragma once

#include <cstdint>
#include <vector>

#include <torch/torch.h>

namespace kiln::parallel::zero {

enum class OptimizerKind { kAdamW, kSgd };

struct OptimizerOptions {
  OptimizerKind kind = OptimizerKind::kAdamW;
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0.01;
  double momentum = 0.0;  // sgd
};

class ShardedOptimizer {
 public:
  explicit ShardedOptimizer(OptimizerOptions options) : options_(options) {}

  // Adds a shard (fp32, 1-D); returns its index. State starts empty.
  std::size_t add_shard(std::int64_t numel);

  // One step on shard `i`: `param` and `grad` are its fp32 master values and
  // gradient (same numel as added).
  // `grad` may be bfloat16 (a bf16 run's gradient share): it is widened to
  // fp32 first, as grad.to(kFloat32) would.
  void step(std::size_t i, torch::Tensor& param, const torch::Tensor& grad);
  // Called once per optimizer step, before the shards' step() calls.
  void begin_step(double lr) {
    options_.lr = lr;
    ++steps_;
  }

  std::int64_t steps() const { return steps_; }
  void set_steps(std::int64_t s) { steps_ = s; }
  const OptimizerOptions& options() const { return options_; }

  // The state tensors of shard i, named ("exp_avg", "exp_avg_sq" or
  // "momentum"); allocated (zero) if the first step has not run yet.
  std::vector<std::pair<const char*, torch::Tensor*>> state(std::size_t i);
  // Whether SGD's momentum buffer exists (LibTorch initialises it from the
  // first gradient rather than from zero).
  bool has_momentum(std::size_t i) const { return shards_[i].momentum_ready; }
  void set_momentum_ready(std::size_t i) { shards_[i].momentum_ready = true; }
  std::size_t state_bytes() const;
  // The scratch's bytes (Note [Optimizer scratch]): transient working memory.
  std::size_t scratch_bytes() const;

 private:
  struct Shard {
    std::int64_t numel = 0;
    torch::Tensor exp_avg, exp_avg_sq, momentum;
    bool momentum_ready = false;
  };
  void ensure_state(Shard& s);
  torch::Tensor scratch(int which, std::int64_t numel);

  OptimizerOptions options_;
  std::vector<Shard> shards_;
  std::int64_t steps_ = 0;
  std::int64_t largest_ = 0;
  torch::Tensor scratch_[2];  // [0] AdamW's denominator, [1] a widened gradient
};

}  // namespace kiln::parallel::zero
