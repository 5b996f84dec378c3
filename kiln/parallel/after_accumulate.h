// AfterAccumulate: a post-hook on a parameter's AccumulateGrad node, run once
// autograd has stored the parameter's gradient (by then param.grad holds the
// accumulated value). c10d's Reducer uses the same hook; kiln::ddp and the
// sharded wrapper both start their reductions from it. Header-only, so ddp
// needs no link to kiln_parallel.
#pragma once

#include <functional>
#include <utility>

#include <torch/csrc/autograd/function_hook.h>

namespace kiln::parallel {

class AfterAccumulate : public torch::autograd::FunctionPostHook {
 public:
  explicit AfterAccumulate(std::function<void()> fn) : fn_(std::move(fn)) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list&) override {
    fn_();
    return outputs;
  }

 private:
  std::function<void()> fn_;
};

}  // namespace kiln::parallel
