#include "kiln/plan/probe/compute_probe.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>

#include "kiln/base/blas_kernel.h"
#include "kiln/base/deadline.h"

namespace kiln::plan::probe {

namespace {

using Clock = std::chrono::steady_clock;

// The small GPTs the elementwise probes are shaped after.
constexpr std::int64_t kSeq = 128;
constexpr std::int64_t kHidden = 128;
constexpr std::int64_t kVocab = 256;


// Note [Timing small kernels]: one call of a small kernel takes tens of
// microseconds, close to the clock's and the scheduler's noise. So each
// repeat runs the call back to back until it has lasted `batch_s`, and the
// per-call time of a repeat is its total over its calls; the median of the
// repeats is what counts (a preempted repeat is an outlier, not an average).
struct Timing {
  double forward_s = 0, backward_s = 0;
};

// Times forward() and, when `backward`, the backward pass of its output
// (with a gradient of ones, or backward() of a scalar), separately.
Timing time_pass(const std::function<torch::Tensor()>& forward, bool backward,
                 const ProbeOptions& o) {
  const double batch_s = o.quick ? 2e-3 : 10e-3;
  const int repeats = o.quick ? 3 : o.repeats;
  torch::Tensor grad;
  auto run = [&](double* f, double* b) {
    const auto t0 = Clock::now();
    torch::Tensor y = forward();
    *f += seconds_since(t0);
    if (!backward) return;
    if (!grad.defined() && y.dim() > 0) grad = torch::ones_like(y);
    const auto t1 = Clock::now();
    if (y.dim() > 0) {
      y.backward(grad);
    } else {
      y.backward();
    }
    *b += seconds_since(t1);
  };
  double f = 0, b = 0;
  run(&f, &b);  // warm: allocator, BLAS buffers, page faults
  run(&f, &b);
  std::vector<double> fs, bs;
  for (int r = 0; r < repeats; ++r) {
    f = b = 0;
    int calls = 0;
    const auto start = Clock::now();
    do {
      run(&f, &b);
      ++calls;
    } while (seconds_since(start) < batch_s);
    fs.push_back(f / calls);
    bs.push_back(b / calls);
  }
  return {median_of(fs), median_of(bs)};
}

torch::Tensor leaf(torch::IntArrayRef shape) { return torch::randn(shape).requires_grad_(true); }

// "512x384x128: 1416 us, ..." for an error message: what a fit was given.
std::string describe(const std::vector<GemmSample>& samples, int threads) {
  std::string out = "with " + std::to_string(threads) + " thread(s), timed";
  for (const GemmSample& s : samples) {
    char buf[96];
    std::snprintf(buf, sizeof(buf), " %gx%gx%g (x%g): %.0f us,", s.m, s.n, s.k, s.batch,
                  s.seconds * 1e6);
    out += buf;
  }
  out.pop_back();
  return out;
}

// Linear layers of small GPTs: tokens × (out, in). Up to 4096 tokens, a
// micro-batch of 32 sequences of 128: the batch one rank of gpt_3d.toml runs
// alone. A fit extrapolated past its shapes predicted one rank's step 32% slow
// (docs/plan.md "Session 12"); the probes reach the sizes the layouts run.
struct LinearShape {
  int tokens, out, in;
};
std::vector<LinearShape> linear_shapes(bool quick) {
  if (quick) return {{256, 384, 128}, {1024, 128, 512}, {512, 512, 128}, {128, 128, 128}};
  std::vector<LinearShape> out;
  for (int tokens : {128, 512, 1024, 2048, 4096}) {
    for (auto [o, i] : {std::pair{384, 128}, std::pair{128, 128}, std::pair{512, 128},
                        std::pair{128, 512}, std::pair{256, 128}}) {
      out.push_back({tokens, o, i});
    }
  }
  return out;
}

// Attention: (micro-batch × local heads, head dimension) at seq 128, up to
// 128 matrices (32 sequences × 4 heads: the same one-rank batch).
std::vector<std::pair<int, int>> attention_shapes(bool quick) {
  if (quick) return {{4, 32}, {16, 32}, {32, 64}};
  return {{2, 32}, {8, 32}, {32, 32}, {128, 32}, {2, 64}, {8, 64}, {32, 64}, {128, 64}};
}

std::vector<std::int64_t> element_counts(bool quick) {
  if (quick) return {16384, 262144};
  return {16384, 131072, 524288};
}

// An elementwise class: forward (and backward) at several sizes, fitted to
// fixed + n·per_element.
Result<std::pair<Affine, Affine>> fit_elementwise(
    const char* what, const std::function<std::function<torch::Tensor()>(std::int64_t)>& make,
    bool backward, const ProbeOptions& o) {
  std::vector<SizeSample> fwd, bwd;
  for (std::int64_t n : element_counts(o.quick)) {
    const Timing t = time_pass(make(n), backward, o);
    fwd.push_back({static_cast<double>(n), t.forward_s});
    bwd.push_back({static_cast<double>(n), t.backward_s});
  }
  // Note [Noisy fits]: on a loaded machine (a quick calibration during a
  // build) points can time backwards; then a plain rate (here the largest
  // point's per-element cost) stands in for the fit rather than failing the
  // profile, and the reported fit error is 100%.
  auto affine = [&](const std::vector<SizeSample>& s) -> Result<Affine> {
    auto f = fit_linear_or_plain_rate(s);
    if (!f.is_ok()) return f.status().with_context(std::string(what) + " probe");
    return Affine{f->fixed_s, 1.0 / f->bytes_per_s};  // "bytes" are elements
  };
  KILN_ASSIGN_OR_RETURN(Affine f, affine(fwd));
  Affine b;
  if (backward) {
    KILN_ASSIGN_OR_RETURN(b, affine(bwd));
  }
  return std::make_pair(f, b);
}

torch::Tensor rotate(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  auto halves = x.chunk(2, -1);
  return x * cos + torch::cat({-halves[1], halves[0]}, -1) * sin;
}

// Restores LibTorch's intra-op thread count on scope exit.
// Sets both thread pools as kiln train does for a rank (trainer.cc,
// trainer_3d.cc): LibTorch's intra-op pool and OpenBLAS's own, which
// otherwise keeps one thread per core whatever LibTorch was told (Note
// [OpenBLAS's own thread pool] in kiln/base/blas_kernel.h); a "1 thread"
// GEMM rate measured with OpenBLAS on every core would be a rate no rank
// of a multi-rank job gets.
class ThreadScope {
 public:
  explicit ThreadScope(int threads) : saved_(torch::get_num_threads()) {
    torch::set_num_threads(threads);
    set_openblas_threads(threads);
  }
  ~ThreadScope() {
    torch::set_num_threads(saved_);
    set_openblas_threads(saved_);
  }

 private:
  int saved_;
};

Result<ComputeProbe> probe(int threads, const ProbeOptions& o) {
  ComputeProbe out;
  ComputeRates& r = out.rates;
  r.threads = threads;

  std::vector<GemmSample> lf, lb;
  for (const LinearShape& s : linear_shapes(o.quick)) {
    torch::Tensor x = leaf({s.tokens, s.in}), w = leaf({s.out, s.in}), b = leaf({s.out});
    const Timing t = time_pass([&] { return torch::linear(x, w, b); }, true, o);
    lf.push_back({double(s.tokens), double(s.out), double(s.in), 1, t.forward_s});
    lb.push_back({double(s.tokens), double(s.out), double(s.in), 1, t.backward_s});
  }
  for (auto [samples, rate] : {std::pair{&lf, &r.linear_fwd}, std::pair{&lb, &r.linear_bwd}}) {
    auto g = fit_gemm(*samples);
    if (g.is_ok()) {
      *rate = {g->call_s, g->flops, g->bytes_per_s};
      out.linear_fit_error = std::max(out.linear_fit_error, g->mean_abs_rel_error);
      out.stalled_shapes += g->stalled_samples;
    } else {  // Note [Noisy fits]: the plain rate over all points
      double flops = 0, seconds = 0;
      for (const GemmSample& x : *samples) flops += 2 * x.m * x.n * x.k, seconds += x.seconds;
      if (!(seconds > 0)) return g.status().with_context("linear layer probe " + describe(*samples, threads));
      *rate = {0, flops / seconds, 0};
      out.linear_fit_error = 1;
    }
  }

  // kiln's attention core: QKᵀ/√d, causal mask, softmax, ·V, heads merged.
  std::vector<GemmSample> af, ab;
  const torch::Tensor mask = torch::ones({kSeq, kSeq}, torch::kBool).triu(1);
  for (auto [bh, hd] : attention_shapes(o.quick)) {
    torch::Tensor q = leaf({1, bh, kSeq, hd}), k = leaf({1, bh, kSeq, hd}),
                  v = leaf({1, bh, kSeq, hd});
    const double scale = std::sqrt(static_cast<double>(hd));
    const Timing t = time_pass(
        [&] {
          torch::Tensor att = torch::matmul(q, k.transpose(-2, -1)) / scale;
          att = torch::softmax(att.masked_fill(mask, -std::numeric_limits<float>::infinity()), -1);
          return torch::matmul(att, v).transpose(1, 2).contiguous();
        },
        true, o);
    af.push_back({double(kSeq), double(kSeq), double(hd), double(bh), t.forward_s});
    ab.push_back({double(kSeq), double(kSeq), double(hd), double(bh), t.backward_s});
  }
  for (auto [samples, rate] : {std::pair{&af, &r.attention_fwd}, std::pair{&ab, &r.attention_bwd}}) {
    auto a = fit_attention(*samples);
    if (a.is_ok()) {
      *rate = {a->call_s, a->flops, a->score_s};
      out.attention_fit_error = std::max(out.attention_fit_error, a->mean_abs_rel_error);
      out.stalled_shapes += a->stalled_samples;
    } else {  // Note [Noisy fits]: the plain rate over all points
      double flops = 0, seconds = 0;
      for (const GemmSample& x : *samples) flops += x.batch * 4 * x.m * x.n * x.k, seconds += x.seconds;
      if (!(seconds > 0)) return a.status().with_context("attention probe " + describe(*samples, threads));
      *rate = {0, flops / seconds, 0};
      out.attention_fit_error = 1;
    }
  }

  std::pair<Affine, Affine> fb;
  KILN_ASSIGN_OR_RETURN(fb, fit_elementwise("layer norm", [&](std::int64_t n) {
    auto x = leaf({n / kHidden, kHidden}), w = leaf({kHidden}), b = leaf({kHidden});
    return std::function<torch::Tensor()>([x, w, b] { return torch::layer_norm(x, {kHidden}, w, b); });
  }, true, o));
  std::tie(r.layer_norm_fwd, r.layer_norm_bwd) = fb;
  KILN_ASSIGN_OR_RETURN(fb, fit_elementwise("gelu", [&](std::int64_t n) {
    auto x = leaf({n});
    return std::function<torch::Tensor()>([x] { return torch::gelu(x); });
  }, true, o));
  std::tie(r.gelu_fwd, r.gelu_bwd) = fb;
  KILN_ASSIGN_OR_RETURN(fb, fit_elementwise("rotary", [&](std::int64_t n) {
    constexpr int kHeadDim = 32;
    const std::int64_t t = n / (4 * kHeadDim);
    auto x = leaf({1, 4, t, kHeadDim});
    auto cos = torch::randn({t, kHeadDim}), sin = torch::randn({t, kHeadDim});
    return std::function<torch::Tensor()>([x, cos, sin] { return rotate(x, cos, sin); });
  }, true, o));
  std::tie(r.rotary_fwd, r.rotary_bwd) = fb;
  KILN_ASSIGN_OR_RETURN(fb, fit_elementwise("add", [&](std::int64_t n) {
    auto a = leaf({n}), b = leaf({n});
    return std::function<torch::Tensor()>([a, b] { return a + b; });
  }, false, o));
  r.add = fb.first;
  KILN_ASSIGN_OR_RETURN(fb, fit_elementwise("cross-entropy", [&](std::int64_t n) {
    const std::int64_t rows = 2 * n / kVocab;  // 2n logits: sizes of kiln's byte-vocabulary heads
    auto logits = leaf({rows, kVocab});
    auto target = torch::randint(0, kVocab, {rows}, torch::kLong);
    return std::function<torch::Tensor()>(
        [logits, target] { return torch::nn::functional::cross_entropy(logits, target); });
  }, true, o));
  // Per logit: the fit saw 2n of them.
  r.loss_fwd = {fb.first.fixed_s, fb.first.per_unit_s / 2};
  r.loss_bwd = {fb.second.fixed_s, fb.second.per_unit_s / 2};
  KILN_ASSIGN_OR_RETURN(fb, fit_elementwise("embedding", [&](std::int64_t n) {
    auto w = leaf({kVocab, kHidden});
    auto idx = torch::randint(0, kVocab, {n / kHidden}, torch::kLong);
    return std::function<torch::Tensor()>([w, idx] { return torch::embedding(w, idx); });
  }, true, o));
  std::tie(r.embedding_fwd, r.embedding_bwd) = fb;

  // AdamW with clipping and zero_grad, as kiln train steps: the same
  // parameters as few large or many small tensors separate the per-tensor
  // cost from the per-parameter one.
  auto optimizer_step = [&](int tensors, std::int64_t each) {
    std::vector<torch::Tensor> params;
    for (int i = 0; i < tensors; ++i) {
      params.push_back(leaf({each}));
      params.back().mutable_grad() = torch::randn({each});
    }
    torch::optim::AdamW opt(params, torch::optim::AdamWOptions(1e-4));
    return time_pass(
               [&] {
                 torch::nn::utils::clip_grad_norm_(params, 1.0);
                 opt.step();
                 for (auto& p : params) p.mutable_grad().zero_();
                 return torch::Tensor();
               },
               false, o)
        .forward_s;
  };
  const double few_small = optimizer_step(12, 16384), few_large = optimizer_step(12, 65536),
               many_small = optimizer_step(48, 16384);
  r.optimizer_param_s = std::max(0.0, (few_large - few_small) / (12.0 * (65536 - 16384)));
  r.optimizer_per_tensor.per_unit_s =
      std::max(0.0, (many_small - few_large) / 36.0);  // same parameters, 36 more tensors
  r.optimizer_per_tensor.fixed_s =
      std::max(0.0, few_small - 12 * r.optimizer_per_tensor.per_unit_s - 12 * 16384 * r.optimizer_param_s);

  torch::Tensor one = torch::ones({1}), other = torch::ones({1});
  r.op_overhead_s = time_pass([&] { return one + other; }, false, o).forward_s;
  return out;
}

}  // namespace

Result<ComputeProbe> probe_compute(int threads, const ProbeOptions& o) {
  ThreadScope scope(threads);
  try {
    return probe(threads, o);
  } catch (const std::exception& e) {
    return internal_error(std::string("compute probe: LibTorch: ") + e.what());
  }
}

Result<double> probe_stream(int threads, const ProbeOptions& o) {
  ThreadScope scope(threads);
  constexpr std::int64_t kElements = 16 << 20;  // 64 MiB of fp32, far beyond the caches
  try {
    torch::NoGradGuard no_grad;
    torch::Tensor src = torch::ones({kElements}), dst = torch::empty({kElements});
    const double t = time_pass([&] { return dst.copy_(src); }, false, o).forward_s;
    return 2.0 * 4 * kElements / t;
  } catch (const std::exception& e) {
    return internal_error(std::string("memory probe: LibTorch: ") + e.what());
  }
}

std::string blas_in_use() {
  const std::string core = openblas_core_in_use();
  if (!core.empty()) return "OpenBLAS " + core;
  return "LibTorch BLAS (not OpenBLAS)";
}

}  // namespace kiln::plan::probe
