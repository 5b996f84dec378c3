#include "kiln/plan/probe/compute_probe.h"

#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <functional>

#include "kiln/base/blas_kernel.h"

namespace kiln::plan::probe {

namespace {

using Clock = std::chrono::steady_clock;

// Note [Timing small kernels]: one call of a small product takes tens of
// microseconds, close to the clock's and the scheduler's noise. So each
// repeat runs the call back to back until it has lasted `batch_s`, and the
// per-call time of a repeat is its total over its calls; the median of the
// repeats is what counts (a preempted repeat is an outlier, not an average).
double time_per_call(const std::function<void()>& call, const ProbeOptions& o) {
  const double batch_s = o.quick ? 2e-3 : 10e-3;
  const int repeats = o.quick ? 3 : o.repeats;
  call();  // warm: allocator, BLAS buffers, page faults
  call();
  std::vector<double> per_call;
  for (int r = 0; r < repeats; ++r) {
    const auto start = Clock::now();
    int calls = 0;
    double elapsed = 0;
    do {
      call();
      ++calls;
      elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    } while (elapsed < batch_s);
    per_call.push_back(elapsed / calls);
  }
  return median_of(per_call);
}

struct Shape {
  int m, n, k, batch;
  bool transposed;  // A is the transpose of a stored K×M matrix (a weight gradient)
};

// The products of kiln's small GPTs (hidden 128-256, seq 128, micro-batches
// of 128-2048 tokens): the linear layers forward, their data gradients and
// weight gradients (inner dimension = tokens).
std::vector<Shape> products(bool quick) {
  if (quick) {
    return {{512, 384, 128, 1, false}, {512, 128, 512, 1, false}, {384, 128, 512, 1, true},
            {128, 128, 128, 1, false}, {1024, 512, 128, 1, false}};
  }
  return {{128, 384, 128, 1, false},  {512, 384, 128, 1, false},  {512, 128, 128, 1, false},
          {512, 512, 128, 1, false},  {512, 128, 512, 1, false},  {2048, 384, 128, 1, false},
          {2048, 512, 128, 1, false}, {2048, 128, 512, 1, false}, {512, 256, 128, 1, false},
          {384, 128, 512, 1, true},   {512, 128, 512, 1, true},   {128, 512, 512, 1, true},
          {128, 128, 2048, 1, true},  {256, 128, 128, 1, true}};
}

// The attention core's batched products (seq 128, head dimensions 32 and
// 64, batch = micro-batch × local heads).
std::vector<Shape> batched(bool quick) {
  if (quick) return {{128, 128, 32, 4, false}, {128, 32, 128, 16, false}, {128, 128, 64, 32, false}};
  std::vector<Shape> out;
  for (int batch : {2, 8, 32}) {
    for (Shape s : std::vector<Shape>{{128, 128, 32, 1, false}, {128, 32, 128, 1, false},
                                      {128, 128, 64, 1, false}, {128, 64, 128, 1, false}}) {
      s.batch = batch;
      out.push_back(s);
    }
  }
  return out;
}

// "512x384x128: 1416 us, ..." for an error message: what the fit was given.
std::string describe(const std::vector<GemmSample>& samples, int threads) {
  std::string out = "with " + std::to_string(threads) + " thread(s), timed";
  for (const GemmSample& s : samples) {
    char buf[96];
    std::snprintf(buf, sizeof(buf), " %gx%gx%g%s: %.0f us,", s.m, s.n, s.k,
                  s.batch > 1 ? (" (x" + std::to_string(static_cast<int>(s.batch)) + ")").c_str() : "",
                  s.seconds * 1e6);
    out += buf;
  }
  out.pop_back();
  return out;
}

template <typename F>
Result<double> guarded(F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    return internal_error(std::string("LibTorch: ") + e.what());
  }
}

// Restores LibTorch's intra-op thread count on scope exit.
class ThreadScope {
 public:
  explicit ThreadScope(int threads) : saved_(torch::get_num_threads()) {
    torch::set_num_threads(threads);
  }
  ~ThreadScope() { torch::set_num_threads(saved_); }

 private:
  int saved_;
};

}  // namespace

Result<ComputeProbe> probe_compute(int threads, const ProbeOptions& o) {
  ThreadScope scope(threads);
  torch::NoGradGuard no_grad;
  ComputeProbe out;
  out.rates.threads = threads;
  auto time_shape = [&](const Shape& s) -> Result<double> {
    return guarded([&] {
      torch::Tensor c = torch::empty({s.batch, s.m, s.n});
      if (s.batch > 1) {
        torch::Tensor a = torch::randn({s.batch, s.m, s.k}), b = torch::randn({s.batch, s.k, s.n});
        return time_per_call([&] { torch::bmm_out(c, a, b); }, o);
      }
      torch::Tensor a = s.transposed ? torch::randn({s.k, s.m}).t() : torch::randn({s.m, s.k});
      torch::Tensor b = torch::randn({s.k, s.n}), c2 = c[0];
      return time_per_call([&] { torch::mm_out(c2, a, b); }, o);
    });
  };
  auto sample = [](const Shape& s, double t) {
    return GemmSample{static_cast<double>(s.m), static_cast<double>(s.n), static_cast<double>(s.k),
                      static_cast<double>(s.batch), t};
  };
  for (const Shape& s : products(o.quick)) {
    auto t = time_shape(s);
    if (!t.is_ok()) return t.status().with_context("GEMM probe");
    out.gemm_samples.push_back(sample(s, *t));
  }
  for (const Shape& s : batched(o.quick)) {
    auto t = time_shape(s);
    if (!t.is_ok()) return t.status().with_context("batched GEMM probe");
    out.bmm_samples.push_back(sample(s, *t));
  }
  auto g_or = fit_gemm(out.gemm_samples);
  if (!g_or.is_ok()) return g_or.status().with_context(describe(out.gemm_samples, threads));
  const GemmFit& g = *g_or;
  out.rates.gemm_flops = g.flops;
  out.rates.gemm_call_s = g.call_s;
  out.rates.gemm_bytes_per_s = g.bytes_per_s;
  out.gemm_fit_error = g.mean_abs_rel_error;
  auto b_or = fit_batched(out.bmm_samples);
  if (!b_or.is_ok()) return b_or.status().with_context(describe(out.bmm_samples, threads));
  const BatchedFit& b = *b_or;
  out.rates.bmm_flops = b.flops;
  out.rates.bmm_call_s = b.call_s;
  out.rates.bmm_product_s = b.per_product_s;
  out.bmm_fit_error = b.mean_abs_rel_error;

  // Elementwise: out = a + b moves 12 bytes per element.
  std::vector<SizeSample> adds;
  for (std::int64_t n : {16384, 65536, 262144}) {
    auto t = guarded([&] {
      torch::Tensor a = torch::randn({n}), b = torch::randn({n}), c = torch::empty({n});
      return time_per_call([&] { torch::add_out(c, a, b); }, o);
    });
    if (!t.is_ok()) return t.status().with_context("elementwise probe");
    adds.push_back({12.0 * static_cast<double>(n), *t});
  }
  KILN_ASSIGN_OR_RETURN(LinearFit e, fit_linear(adds));
  out.rates.elementwise_bytes_per_s = e.bytes_per_s;
  // The per-op cost as kiln's models pay it: an op that allocates its output.
  auto op = guarded([&] {
    torch::Tensor a = torch::ones({1}), b = torch::ones({1});
    torch::Tensor c;
    return time_per_call([&] { c = a + b; }, o);
  });
  if (!op.is_ok()) return op.status().with_context("op overhead probe");
  out.rates.op_overhead_s = *op;
  return out;
}

Result<double> probe_stream(int threads, const ProbeOptions& o) {
  ThreadScope scope(threads);
  constexpr std::int64_t kElements = 16 << 20;  // 64 MiB of fp32, far beyond the caches
  auto t = guarded([&] {
    torch::Tensor src = torch::ones({kElements}), dst = torch::empty({kElements});
    return time_per_call([&] { dst.copy_(src); }, o);
  });
  if (!t.is_ok()) return t.status().with_context("memory probe");
  return 2.0 * 4 * kElements / *t;
}

std::string blas_in_use() {
  const std::string core = openblas_core_in_use();
  if (!core.empty()) return "OpenBLAS " + core;
  return "LibTorch BLAS (not OpenBLAS)";
}

}  // namespace kiln::plan::probe
