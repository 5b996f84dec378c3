// What `kiln bench ddp` and `kiln bench fsdp` share: the MLP both train
// (io -> width -> ... -> io, io 1024 unless given; each layer run as a unit so the sharded
// wrapper can gather it; without a wrapper run_unit is a plain call) and the
// timing helpers.
#pragma once

#include <algorithm>
#include <chrono>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "kiln/parallel/unit_hooks.h"

namespace kiln::cli::bench {

struct MlpImpl : torch::nn::Module {
  MlpImpl(int width, int hidden_layers, int io = 1024) {
    layers.push_back(register_module("in", torch::nn::Linear(io, width)));
    for (int i = 0; i < hidden_layers; ++i) {
      layers.push_back(register_module(fmt::format("h{}", i), torch::nn::Linear(width, width)));
    }
    layers.push_back(register_module("out", torch::nn::Linear(width, io)));
  }
  // Computes in the parameters' dtype (bf16 under a bf16 sharded wrapper);
  // the output comes back in float32.
  torch::Tensor forward(torch::Tensor x) {
    x = x.to(layers[0]->weight.scalar_type());
    for (std::size_t i = 0; i < layers.size(); ++i) {
      auto& l = layers[i];
      const bool last = i + 1 == layers.size();
      x = parallel::run_unit(*l, [&] { return last ? l->forward(x) : torch::relu(l->forward(x)); });
    }
    return x.to(torch::kFloat32);
  }
  std::vector<torch::nn::Linear> layers;
};

inline double median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

inline double since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace kiln::cli::bench
