#include "kiln/plan/probe/sharing_probe.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "kiln/base/blas_kernel.h"
#include "kiln/plan/calibration_fit.h"

namespace kiln::plan::probe {

struct SharingWork::Tensors {
  explicit Tensors(int rows)
      : x(torch::randn({rows, 128})),
        w(torch::randn({512, 128}).mul_(0.05).requires_grad_(true)),
        b(torch::zeros({512}).requires_grad_(true)),
        grad(torch::ones({rows, 512})) {}
  torch::Tensor x, w, b, grad;
};

SharingWork::SharingWork(int rows) : t_(std::make_unique<Tensors>(std::max(1, rows))) {}
SharingWork::~SharingWork() = default;

void SharingWork::run(int units) {
  for (int i = 0; i < units; ++i) {
    torch::Tensor y = torch::linear(t_->x, t_->w, t_->b);
    y.backward(t_->grad);
  }
}

double time_units(SharingWork& work, int repeats, double batch_s) {
  std::vector<double> per_unit;
  for (int r = 0; r < std::max(1, repeats); ++r) {
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
  return median_of(per_unit);
}

Result<double> time_sharing_unit(const ProbeOptions& o, int rows) {
  try {
    const int before = torch::get_num_threads();
    torch::set_num_threads(1);
    set_openblas_threads(1);
    SharingWork work(rows);
    work.run(3);  // warm: allocator, BLAS buffers
    const double unit_s = time_units(work, o.quick ? 3 : o.repeats, o.quick ? 5e-3 : 20e-3);
    torch::set_num_threads(before);
    set_openblas_threads(before);
    return unit_s;
  } catch (const std::exception& e) {
    return internal_error(std::string("core-sharing probe: LibTorch: ") + e.what());
  }
}

}  // namespace kiln::plan::probe
