// Units: the submodules a sharded wrapper gathers, frees and reduces as one.
//
// LibTorch's C++ modules have no forward hooks, so a model that wants its
// parameters sharded at the granularity of its submodules runs each unit's
// forward through run_unit(). Without a wrapper installed it is a plain
// call. With one (kiln/parallel/zero/sharded_data_parallel.h), the wrapper
// gathers the unit's parameters before the call and may free them after it,
// and registers a gradient hook on the output that gathers them again before
// the unit's backward runs.
//
//   x = parallel::run_unit(*block, [&] { return block->forward(x); });
//
// Thread safety: hooks are installed and removed while no forward runs;
// run_unit() may be called from any thread.
#pragma once

#include <cstddef>
#include <utility>

#include <torch/nn/module.h>

namespace kiln::parallel {

class UnitHooks {
 public:
  virtual ~UnitHooks() = default;
  // May block (gathering parameters) and throw (a failed collective; the
  // exception leaves the forward at the LibTorch boundary).
  virtual void before_forward(std::size_t unit) = 0;
  virtual void after_forward(std::size_t unit, const torch::nn::Module& module,
                             torch::Tensor& out) = 0;
};

// Installs `hooks` for `module` as unit number `unit`; nullptr removes them.
void set_unit_hooks(const torch::nn::Module* module, UnitHooks* hooks, std::size_t unit);

struct InstalledHooks {
  UnitHooks* hooks = nullptr;
  std::size_t unit = 0;
};
InstalledHooks find_unit_hooks(const torch::nn::Module* module);

template <class Forward>
torch::Tensor run_unit(const torch::nn::Module& module, Forward&& forward) {
  InstalledHooks h = find_unit_hooks(&module);
  if (h.hooks == nullptr) return std::forward<Forward>(forward)();
  h.hooks->before_forward(h.unit);
  torch::Tensor out = std::forward<Forward>(forward)();
  h.hooks->after_forward(h.unit, module, out);
  return out;
}

}  // namespace kiln::parallel
