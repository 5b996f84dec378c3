#include "kiln/plan/probe/sharing_probe.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "kiln/base/blas_kernel.h"
#include "kiln/plan/calibration_fit.h"

namespace kiln::plan::probe {

// Four sequences of 128 tokens through a 128 -> 512 linear layer: the FFN
// input of examples/train/gpt_3d.toml's block, a few hundred microseconds.
struct SharingWork::Tensors {
  torch::Tensor x = torch::randn({512, 128});
  torch::Tensor w = torch::randn({512, 128}).mul_(0.05).requires_grad_(true);
  torch::Tensor b = torch::zeros({512}).requires_grad_(true);
  torch::Tensor grad = torch::ones({512, 512});
};

SharingWork::SharingWork() : t_(std::make_unique<Tensors>()) {}
SharingWork::~SharingWork() = default;

void SharingWork::run(int units) {
  for (int i = 0; i < units; ++i) {
    torch::Tensor y = torch::linear(t_->x, t_->w, t_->b);
    y.backward(t_->grad);
  }
}

Result<double> time_sharing_unit(const ProbeOptions& o) {
  try {
    const int before = torch::get_num_threads();
    torch::set_num_threads(1);
    set_openblas_threads(1);
    SharingWork work;
    work.run(3);  // warm: allocator, BLAS buffers
    const double batch_s = o.quick ? 5e-3 : 20e-3;
    std::vector<double> per_unit;
    for (int r = 0; r < (o.quick ? 3 : o.repeats); ++r) {
      int units = 0;
      const auto start = std::chrono::steady_clock::now();
      double elapsed = 0;
      do {
        work.run(1);
        ++units;
        elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      } while (elapsed < batch_s);
      per_unit.push_back(elapsed / units);
    }
    torch::set_num_threads(before);
    set_openblas_threads(before);
    // The fastest batch: on a shared machine noise only ever adds time, and
    // the unit is meant as one rank's unshared speed.
    return *std::min_element(per_unit.begin(), per_unit.end());
  } catch (const std::exception& e) {
    return internal_error(std::string("core-sharing probe: LibTorch: ") + e.what());
  }
}

}  // namespace kiln::plan::probe
