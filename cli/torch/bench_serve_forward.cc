#include "cli/torch/bench_serve_forward.h"

#include <ATen/Context.h>
#include <ATen/ops/mkldnn_convolution.h>
#include <ATen/ops/mkldnn_max_pool2d.h>
#include <ATen/ops/mkldnn_reorder_conv2d_weight.h>
#include <fmt/format.h>
#include <immintrin.h>
#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <random>
#include <thread>

#include "kiln/base/heap.h"
#include "kiln/ckpt/load.h"
#include "kiln/serve/load_gen.h"
#include "kiln/serve/step_weights.h"
#include "kiln/serve/torch_model.h"

namespace kiln::cli {
namespace {

// Note [Where a batched forward's time goes]: batching_gain is bounded by
// the forward pass's own gain (batch 1's time over the time per image of a
// large batch), and that per-image time is arithmetic: ~8.5 MFLOP per image
// for the make demo CNN, 85% of it conv2. On the Zen 3 VM of session 13
// (AVX2, two 256-bit FMA pipes) one core peaks at ~90 GFLOP/s, so no batch
// can cost less than ~0.095 ms per image; the earlier VM (family 26, AVX-512)
// had about twice that per cycle, and measured 0.06 ms. This part times each
// op of CnnImpl::forward's inference path (kiln/train/task.cc) on the
// checkpoint's own weights, per batch size, with LibTorch's default
// convolution (oneDNN from batch 2; im2col + BLAS at batch 1), with the
// native im2col + GEMM forced (mkldnn off) and with channels-last
// activations, and reports conv2's GFLOP/s against the core's FMA peak
// measured in the same process: what is left to win per image, and where.

using Clock = std::chrono::steady_clock;
using nlohmann::json;

// Seconds per call: the median of 5 repetitions of `iters` calls.
double seconds_per_call(const std::function<void()>& f, int iters) {
  for (int i = 0; i < 3; ++i) f();
  std::vector<double> s;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
    for (int i = 0; i < iters; ++i) f();
    s.push_back(std::chrono::duration<double>(Clock::now() - t0).count() / iters);
  }
  return serve::quantile(s, 0.5);
}

// Ten independent chains of 8-wide fused multiply-adds: enough in flight
// to fill both FMA pipes at their latency. GFLOP/s of one core.
__attribute__((target("avx2,fma"))) double avx2_fma_gflops() {
  __m256 a0 = _mm256_set1_ps(1), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0,
         a8 = a0, a9 = a0;
  const __m256 m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
  constexpr long kIters = 20'000'000;
  const auto t0 = Clock::now();
  for (long k = 0; k < kIters; ++k) {
    a0 = _mm256_fmadd_ps(a0, m, c), a1 = _mm256_fmadd_ps(a1, m, c);
    a2 = _mm256_fmadd_ps(a2, m, c), a3 = _mm256_fmadd_ps(a3, m, c);
    a4 = _mm256_fmadd_ps(a4, m, c), a5 = _mm256_fmadd_ps(a5, m, c);
    a6 = _mm256_fmadd_ps(a6, m, c), a7 = _mm256_fmadd_ps(a7, m, c);
    a8 = _mm256_fmadd_ps(a8, m, c), a9 = _mm256_fmadd_ps(a9, m, c);
    // Keeps the chains in registers and the loop from being folded away.
    __asm__ volatile(""
                     : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5), "+x"(a6),
                       "+x"(a7), "+x"(a8), "+x"(a9));
  }
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  return kIters * 10.0 * 16 / s / 1e9;
}

double fma_peak_gflops() {
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return 0;
  return avx2_fma_gflops();
}

// Note [Max pooling without autograd] (kiln/train/task.cc): the served
// CNN's pooling, repeated here to time it alone.
torch::Tensor relu_max_pool_2x2(const torch::Tensor& x) {
  const std::int64_t h = x.size(2) / 2 * 2, w = x.size(3) / 2 * 2;
  const torch::Tensor rows = torch::maximum(x.slice(2, 0, h, 2), x.slice(2, 1, h, 2));
  return torch::maximum(rows.slice(3, 0, w, 2), rows.slice(3, 1, w, 2)).relu_();
}

struct CnnWeights {
  torch::Tensor conv1_w, conv1_b, conv2_w, conv2_b, fc1_w, fc1_b, fc2_w, fc2_b;
};

Result<torch::Tensor> weight(const serve::StepWeights& s, const std::string& name) {
  const serve::WeightTensor* t = s.find("param/" + name);
  if (t == nullptr) return failed_precondition(fmt::format("{}: no CNN tensor '{}'", s.dir(), name));
  if (t->spec.dtype != comm::DataType::kFloat32) {
    return failed_precondition(fmt::format("{}: '{}' is not float32", s.dir(), name));
  }
  return torch::from_blob(const_cast<std::byte*>(t->data.data()), t->spec.shape,
                          torch::kFloat32);
}

Result<CnnWeights> cnn_weights(const serve::StepWeights& s) {
  CnnWeights w;
  KILN_ASSIGN_OR_RETURN(w.conv1_w, weight(s, "conv1.weight"));
  KILN_ASSIGN_OR_RETURN(w.conv1_b, weight(s, "conv1.bias"));
  KILN_ASSIGN_OR_RETURN(w.conv2_w, weight(s, "conv2.weight"));
  KILN_ASSIGN_OR_RETURN(w.conv2_b, weight(s, "conv2.bias"));
  KILN_ASSIGN_OR_RETURN(w.fc1_w, weight(s, "fc1.weight"));
  KILN_ASSIGN_OR_RETURN(w.fc1_b, weight(s, "fc1.bias"));
  KILN_ASSIGN_OR_RETURN(w.fc2_w, weight(s, "fc2.weight"));
  KILN_ASSIGN_OR_RETURN(w.fc2_b, weight(s, "fc2.bias"));
  return w;
}

// Multiply-adds ×2 of a 3×3 convolution with padding 1 over one image.
double conv_flop(const torch::Tensor& w, std::int64_t h, std::int64_t wd) {
  return 2.0 * static_cast<double>(w.size(0) * w.size(1) * 9 * h * wd);
}

// The served forwards compared (Note [The CNN's forward in oneDNN's layout],
// kiln/serve/blocked_cnn.h): the key of each one's whole-forward column.
struct ServedForward {
  const char* key;
  serve::Model* model;
};

// µs per image of each op at batch `b`, the activations of each op's input
// computed once beforehand (every op is timed on its real input).
json ops_at(const CnnWeights& w, const std::vector<ServedForward>& models, int b) {
  const int iters = std::max(4, 128 / b);
  const auto cl = torch::MemoryFormat::ChannelsLast;
  auto per_image = [&](double s) { return s * 1e6 / b; };
  torch::Tensor pixels = torch::randint(0, 256, {b, 1, 28, 28}, torch::kFloat32);
  torch::Tensor x = pixels.div(255.0).sub_(0.286).div_(0.353);
  torch::Tensor c1 = torch::conv2d(x, w.conv1_w, w.conv1_b, 1, 1);
  torch::Tensor p1 = relu_max_pool_2x2(c1);
  torch::Tensor c2 = torch::conv2d(p1, w.conv2_w, w.conv2_b, 1, 1);
  torch::Tensor p2 = relu_max_pool_2x2(c2);
  torch::Tensor h = torch::relu(torch::linear(p2.flatten(1), w.fc1_w, w.fc1_b));
  json o;
  o["normalize"] = per_image(seconds_per_call([&] { pixels.div(255.0).sub_(0.286).div_(0.353); }, iters));
  o["conv1"] = per_image(seconds_per_call([&] { torch::conv2d(x, w.conv1_w, w.conv1_b, 1, 1); }, iters));
  o["pool1"] = per_image(seconds_per_call([&] { relu_max_pool_2x2(c1); }, iters));
  o["conv2"] = per_image(seconds_per_call([&] { torch::conv2d(p1, w.conv2_w, w.conv2_b, 1, 1); }, iters));
  o["pool2"] = per_image(seconds_per_call([&] { relu_max_pool_2x2(c2); }, iters));
  o["fc1_relu"] = per_image(seconds_per_call([&] { torch::relu(torch::linear(p2.flatten(1), w.fc1_w, w.fc1_b)); }, iters));
  o["fc2"] = per_image(seconds_per_call([&] { torch::linear(h, w.fc2_w, w.fc2_b); }, iters));
  // The same two convolutions in channels-last (oneDNN's native layout on
  // AVX2: no reorders in or out), then on LibTorch's own im2col + GEMM.
  torch::Tensor x_cl = x.contiguous(cl), p1_cl = p1.contiguous(cl);
  torch::Tensor w1_cl = w.conv1_w.contiguous(cl), w2_cl = w.conv2_w.contiguous(cl);
  o["conv1_channels_last"] = per_image(seconds_per_call([&] { torch::conv2d(x_cl, w1_cl, w.conv1_b, 1, 1); }, iters));
  o["conv2_channels_last"] = per_image(seconds_per_call([&] { torch::conv2d(p1_cl, w2_cl, w.conv2_b, 1, 1); }, iters));
  at::globalContext().setUserEnabledMkldnn(false);
  o["conv1_im2col"] = per_image(seconds_per_call([&] { torch::conv2d(x, w.conv1_w, w.conv1_b, 1, 1); }, iters));
  o["conv2_im2col"] = per_image(seconds_per_call([&] { torch::conv2d(p1, w.conv2_w, w.conv2_b, 1, 1); }, iters));
  at::globalContext().setUserEnabledMkldnn(true);
  // The blocked forward's ops: oneDNN tensors from the input to the last
  // pooling, the convolution weights reordered once (what conv1/conv2 above
  // reorder in every call).
  const std::int64_t pad[] = {1, 1}, one[] = {1, 1};
  const torch::Tensor bw1 = at::mkldnn_reorder_conv2d_weight(w.conv1_w.to_mkldnn(), pad, one, one, 1);
  const torch::Tensor bw2 = at::mkldnn_reorder_conv2d_weight(w.conv2_w.to_mkldnn(), pad, one, one, 1);
  const torch::Tensor bb1 = w.conv1_b.to_mkldnn(), bb2 = w.conv2_b.to_mkldnn();
  auto blocked_pool = [](const torch::Tensor& t) { return at::mkldnn_max_pool2d(t, {2, 2}, {2, 2}).relu_(); };
  torch::Tensor bx = x.to_mkldnn();
  torch::Tensor bc1 = at::mkldnn_convolution(bx, bw1, bb1, pad, one, one, 1);
  torch::Tensor bp1 = blocked_pool(bc1);
  torch::Tensor bc2 = at::mkldnn_convolution(bp1, bw2, bb2, pad, one, one, 1);
  torch::Tensor bp2 = blocked_pool(bc2);
  o["to_blocked"] = per_image(seconds_per_call([&] { x.to_mkldnn(); }, iters));
  o["conv1_blocked"] = per_image(seconds_per_call([&] { at::mkldnn_convolution(bx, bw1, bb1, pad, one, one, 1); }, iters));
  o["pool1_blocked"] = per_image(seconds_per_call([&] { blocked_pool(bc1); }, iters));
  o["conv2_blocked"] = per_image(seconds_per_call([&] { at::mkldnn_convolution(bp1, bw2, bb2, pad, one, one, 1); }, iters));
  o["pool2_blocked"] = per_image(seconds_per_call([&] { blocked_pool(bc2); }, iters));
  o["to_dense"] = per_image(seconds_per_call([&] { bp2.to_dense(); }, iters));
  // Each served model's whole forward, input building included. Its first
  // call at this batch size apart (in ms, whole batch): the oneDNN forward
  // builds its plan for the size there (Note [The CNN's forward on oneDNN's
  // own API]); LibTorch's convolutions build or look up theirs.
  serve::Input image;
  for (int i = 0; i < 784; ++i) image.image.push_back(static_cast<float>(i % 256));
  std::vector<serve::Input> batch(static_cast<std::size_t>(b), image);
  for (const ServedForward& f : models) {
    const auto t0 = Clock::now();
    f.model->run(batch);
    o[std::string(f.key) + "_first_ms"] =
        std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  }
  for (const ServedForward& f : models) {
    o[f.key] = per_image(seconds_per_call([&] { f.model->run(batch); }, iters));
  }
  // The forwards again, alternating in one loop, so a slow stretch of the
  // host falls on both (their medians above ran minutes apart at most, but
  // this VM's noise is larger than the differences: docs/perf.md).
  std::vector<std::vector<double>> alternating(models.size());
  for (int rep = 0; rep < 7; ++rep) {
    for (std::size_t k = 0; k < models.size(); ++k) {
      const auto t0 = Clock::now();
      for (int i = 0; i < iters; ++i) models[k].model->run(batch);
      alternating[k].push_back(std::chrono::duration<double>(Clock::now() - t0).count() / iters);
    }
  }
  for (std::size_t k = 0; k < models.size(); ++k) {
    o[std::string(models[k].key) + "_alternating"] = per_image(serve::quantile(alternating[k], 0.5));
  }
  return o;
}

}  // namespace

Result<json> forward_ops(const std::string& model_root) {
  KILN_ASSIGN_OR_RETURN(ckpt::LoadedState loaded, ckpt::load_latest(model_root, {}));
  const auto state = serve::StepWeights::from_loaded(std::move(loaded));
  keep_freed_heap_memory();  // as a replica does
  json out = json::object();
  Status status;
  std::thread worker([&] {  // a thread of its own, like a replica's batch worker
    serve::warm_up_torch(1);
    std::vector<std::unique_ptr<serve::Model>> models;
    std::vector<ServedForward> forwards;
    for (auto [key, kind] : {std::pair{"model", serve::CnnForward::kModule},
                             std::pair{"model_blocked", serve::CnnForward::kBlocked},
                             std::pair{"model_blocked_fc_onednn", serve::CnnForward::kBlockedFcOnednn},
                             std::pair{"model_onednn", serve::CnnForward::kOnednn}}) {
      // What each forward adds to a replica's load (the oneDNN forward
      // reorders its weights and builds its batch-1 plan there).
      const auto t0 = Clock::now();
      auto model = serve::load_torch_model(
          state, {.threads = 1, .threads_capped_by_caller = true, .cnn_forward = kind});
      if (!model.is_ok()) {
        status = model.status();
        return;
      }
      out["load_ms"][key] = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
      models.push_back(std::move(model).value());
      forwards.push_back({key, models.back().get()});
    }
    auto w = cnn_weights(state);
    if (!w.is_ok()) {
      status = w.status();
      return;
    }
    c10::InferenceMode inference;
    out["fma_peak_gflops"] = fma_peak_gflops();
    const double conv2_flop = conv_flop(w->conv2_w, 14, 14);
    out["mflop_per_image"] = (conv_flop(w->conv1_w, 28, 28) + conv2_flop +
                              2.0 * static_cast<double>(w->fc1_w.numel() + w->fc2_w.numel())) /
                             1e6;
    for (int b : {1, 2, 4, 8, 16, 20, 32, 48, 64}) {
      out["batches"].push_back(b);
      json o = ops_at(*w, forwards, b);
      out["conv2_gflops"][std::to_string(b)] = conv2_flop / o["conv2"].get<double>() / 1e3;
      out["per_batch"][std::to_string(b)] = std::move(o);
    }
  });
  worker.join();
  KILN_RETURN_IF_ERROR(status);
  return out;
}

void print_forward_ops(const json& ops) {
  std::printf("forward pass by op (µs per image; %.2f MFLOP per image; one core's FMA peak %.1f "
              "GFLOP/s):\n",
              ops["mflop_per_image"].get<double>(), ops["fma_peak_gflops"].get<double>());
  // One row per op (or whole forward), one column per batch size.
  const char* rows[] = {"model", "model_blocked", "model_blocked_fc_onednn", "model_onednn",
                        "model_alternating", "model_blocked_alternating",
                        "model_blocked_fc_onednn_alternating", "model_onednn_alternating",
                        "model_first_ms", "model_onednn_first_ms", "normalize",
                        "conv1", "pool1", "conv2", "pool2", "fc1_relu", "fc2",
                        "conv2_channels_last", "conv2_im2col", "to_blocked", "conv1_blocked",
                        "pool1_blocked", "conv2_blocked", "pool2_blocked", "to_dense"};
  std::printf("%-24s", "batch");
  for (const auto& batch : ops["batches"]) std::printf(" %7d", batch.get<int>());
  std::printf("\n");
  for (const char* r : rows) {
    std::printf("%-24s", r);
    for (const auto& batch : ops["batches"]) {
      std::printf(" %7.1f", ops["per_batch"][std::to_string(batch.get<int>())][r].get<double>());
    }
    std::printf("\n");
  }
  std::printf("%-24s", "conv2 GFLOP/s");
  for (const auto& batch : ops["batches"]) {
    std::printf(" %7.1f", ops["conv2_gflops"][std::to_string(batch.get<int>())].get<double>());
  }
  std::printf("\n");
  std::printf("load (ms):");
  for (const auto& [key, ms] : ops["load_ms"].items()) std::printf(" %s %.1f", key.c_str(), ms.get<double>());
  std::printf("\n");
}

}  // namespace kiln::cli
