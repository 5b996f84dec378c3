#include "kiln/plan/calibration_fit.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <utility>


namespace kiln::plan {

namespace {

// Weighted least squares over up to three unknowns: minimise
// Σ_i (Σ_j x_j·a_ij / t_i − 1)², i.e. relative error. `use` masks unknowns
// out (fixed at 0). Returns false when the normal equations are singular.
using Row = std::array<double, 3>;

bool solve_relative(const std::vector<Row>& a, const std::vector<double>& t,
                    const std::array<bool, 3>& use, Row* x) {
  std::array<int, 3> idx{};
  int n = 0;
  for (int j = 0; j < 3; ++j) {
    if (use[j]) idx[n++] = j;
  }
  double ata[3][4] = {};
  for (size_t i = 0; i < a.size(); ++i) {
    const double w = 1.0 / t[i];
    for (int r = 0; r < n; ++r) {
      for (int c = 0; c < n; ++c) ata[r][c] += a[i][idx[r]] * w * a[i][idx[c]] * w;
      ata[r][n] += a[i][idx[r]] * w;  // · (t_i · w) = 1
    }
  }
  // Gaussian elimination with partial pivoting.
  for (int col = 0; col < n; ++col) {
    int piv = col;
    for (int r = col + 1; r < n; ++r) {
      if (std::abs(ata[r][col]) > std::abs(ata[piv][col])) piv = r;
    }
    if (std::abs(ata[piv][col]) < 1e-300) return false;
    for (int c = 0; c <= n; ++c) std::swap(ata[col][c], ata[piv][c]);
    for (int r = 0; r < n; ++r) {
      if (r == col) continue;
      const double f = ata[r][col] / ata[col][col];
      for (int c = col; c <= n; ++c) ata[r][c] -= f * ata[col][c];
    }
  }
  *x = {0, 0, 0};
  for (int r = 0; r < n; ++r) (*x)[idx[r]] = ata[r][n] / ata[r][r];
  return true;
}

// Fits with every unknown in `use`, dropping the first that comes out
// negative (keeping `keep`, the rate term, always) until all are >= 0.
bool fit_nonnegative(const std::vector<Row>& a, const std::vector<double>& t,
                     std::array<bool, 3> use, int keep, Row* x) {
  while (true) {
    if (!solve_relative(a, t, use, x)) return false;
    int negative = -1;
    for (int j = 0; j < 3; ++j) {
      if (use[j] && j != keep && (*x)[j] < 0) negative = j;
    }
    if (negative < 0) return (*x)[keep] > 0;
    use[negative] = false;
  }
}

double predicted(const Row& a, const Row& x) { return a[0] * x[0] + a[1] * x[1] + a[2] * x[2]; }

double mean_abs_rel(const std::vector<Row>& a, const std::vector<double>& t, const Row& x) {
  double sum = 0;
  for (size_t i = 0; i < a.size(); ++i) sum += std::abs(predicted(a[i], x) / t[i] - 1);
  return a.empty() ? 0 : sum / static_cast<double>(a.size());
}

// Note [Stalled shapes]: with two intra-op threads on a 2-core host (LibTorch's
// OpenMP pool and OpenBLAS's own pool, four threads on two cores), a kernel
// now and then runs 3-10x slower for a whole timed repeat: four runs of the
// same 2-thread probes in one hold (2026-12-07 11:40) timed 2048x128x128
// forward at 0.9, 3.4, 8.9 and 5.7 ms, and 8 attention matrices of 128x32 at
// 1.0 or 10-11 ms, where one thread is steady. Fitted in relative error one
// such point moves a rate by up to 10x: session 11's calibration fitted the
// 2-thread attention core at 3.7 GFLOP/s with no per-score term, which,
// extrapolated from 32 to 128 matrices, priced a one-rank step 32% slow. A
// stall only ever makes a point slower, so a point over kStallFactor times
// the fit of the others is left out (the worst first, one at a time,
// refitting after each) while at least twice as many points as unknowns
// remain. The factor is large on purpose: the 1.5-2x scatter a training step
// also sees stays in the fit; only a point no rate could explain leaves. The
// fit error is over the points kept.
constexpr double kStallFactor = 3.0;

struct RobustFit {
  Row x{};
  std::vector<Row> a;  // the points kept
  std::vector<double> t;
  int stalled = 0;
};

bool fit_without_stalls(std::vector<Row> a, std::vector<double> t, std::array<bool, 3> use, int keep,
                        RobustFit* out) {
  Row x{};
  if (!fit_nonnegative(a, t, use, keep, &x)) return false;
  int stalled = 0;
  const size_t least = 2 * static_cast<size_t>(std::count(use.begin(), use.end(), true));
  while (a.size() > least) {
    size_t worst = 0;
    for (size_t i = 1; i < a.size(); ++i) {
      if (t[i] / predicted(a[i], x) > t[worst] / predicted(a[worst], x)) worst = i;
    }
    if (!(t[worst] > kStallFactor * predicted(a[worst], x))) break;
    std::vector<Row> a2 = a;
    std::vector<double> t2 = t;
    a2.erase(a2.begin() + static_cast<long>(worst));
    t2.erase(t2.begin() + static_cast<long>(worst));
    Row x2{};
    if (!fit_nonnegative(a2, t2, use, keep, &x2)) break;
    a = std::move(a2), t = std::move(t2), x = x2;
    ++stalled;
  }
  *out = {x, std::move(a), std::move(t), stalled};
  return true;
}

}  // namespace

Result<GemmFit> fit_gemm(const std::vector<GemmSample>& samples) {
  std::vector<Row> a;
  std::vector<double> t;
  for (const GemmSample& s : samples) {
    if (!(s.seconds > 0)) continue;
    a.push_back({1.0, s.batch * 2 * s.m * s.n * s.k,
                 s.batch * 4 * (s.m * s.k + s.k * s.n + s.m * s.n)});
    t.push_back(s.seconds);
  }
  if (a.size() < 3) {
    return invalid_argument("GEMM fit: need at least 3 timed shapes (got " +
                            std::to_string(a.size()) + ")");
  }
  RobustFit r;
  if (!fit_without_stalls(a, t, {true, true, true}, 1, &r)) {
    return invalid_argument(
        "GEMM fit: the timings do not grow with the FLOPs (a noisy or overloaded machine?)");
  }
  GemmFit f;
  f.call_s = r.x[0];
  f.flops = 1.0 / r.x[1];
  f.bytes_per_s = r.x[2] > 0 ? 1.0 / r.x[2] : 0;
  f.mean_abs_rel_error = mean_abs_rel(r.a, r.t, r.x);
  f.stalled_samples = r.stalled;
  return f;
}

Result<AttentionFit> fit_attention(const std::vector<GemmSample>& samples) {
  std::vector<Row> a;
  std::vector<double> t;
  for (const GemmSample& s : samples) {
    if (!(s.seconds > 0)) continue;
    a.push_back({1.0, s.batch * 4 * s.m * s.n * s.k, s.batch * s.m * s.n});
    t.push_back(s.seconds);
  }
  if (a.size() < 3) {
    return invalid_argument("attention fit: need at least 3 timed shapes (got " +
                            std::to_string(a.size()) + ")");
  }
  RobustFit r;
  if (!fit_without_stalls(a, t, {true, true, true}, 1, &r)) {
    return invalid_argument(
        "attention fit: the timings do not grow with the FLOPs (a noisy or overloaded machine?)");
  }
  AttentionFit f;
  f.call_s = r.x[0];
  f.flops = 1.0 / r.x[1];
  f.score_s = r.x[2];
  f.mean_abs_rel_error = mean_abs_rel(r.a, r.t, r.x);
  f.stalled_samples = r.stalled;
  return f;
}

Result<LinearFit> fit_linear(const std::vector<SizeSample>& samples) {
  std::vector<Row> a;
  std::vector<double> t;
  double lo = 0, hi = 0;
  for (const SizeSample& s : samples) {
    if (!(s.seconds > 0)) continue;
    a.push_back({1.0, s.bytes, 0});
    t.push_back(s.seconds);
    lo = a.size() == 1 ? s.bytes : std::min(lo, s.bytes);
    hi = std::max(hi, s.bytes);
  }
  if (a.size() < 2 || !(hi > lo)) {
    return invalid_argument("size fit: need timings at two or more distinct sizes");
  }
  Row x{};
  if (!fit_nonnegative(a, t, {true, true, false}, 1, &x)) {
    return invalid_argument("size fit: the time does not grow with the size");
  }
  LinearFit f;
  f.fixed_s = x[0];
  f.bytes_per_s = 1.0 / x[1];
  f.mean_abs_rel_error = mean_abs_rel(a, t, x);
  return f;
}

Result<LinearFit> fit_linear_or_plain_rate(const std::vector<SizeSample>& samples) {
  auto fit = fit_linear(samples);
  if (fit.is_ok()) return fit;
  const auto largest = std::max_element(
      samples.begin(), samples.end(),
      [](const SizeSample& a, const SizeSample& b) { return a.bytes < b.bytes; });
  if (largest == samples.end() || !(largest->seconds > 0)) return fit.status();
  LinearFit f;
  f.bytes_per_s = largest->bytes / largest->seconds;
  f.mean_abs_rel_error = 1;
  f.plain_rate = true;
  return f;
}

Result<std::vector<CoreSharingPoint>> fit_core_sharing(const std::vector<SharingSample>& samples) {
  std::vector<double> levels;
  for (const SharingSample& s : samples) {
    if (std::find(levels.begin(), levels.end(), s.ranks_per_core) == levels.end()) {
      levels.push_back(s.ranks_per_core);
    }
  }
  std::sort(levels.begin(), levels.end());
  std::vector<CoreSharingPoint> out;
  for (const double level : levels) {
    // round = handoff · 1 + slowdown · (max(1, level) · work): unknowns x0, x1.
    std::vector<Row> a;
    std::vector<double> t;
    double lo = 0, hi = 0;
    for (const SharingSample& s : samples) {
      if (s.ranks_per_core != level || !(s.round_s > 0) || !(s.work_s > 0)) continue;
      a.push_back({1.0, std::max(1.0, level) * s.work_s, 0});
      t.push_back(s.round_s);
      lo = a.size() == 1 ? s.work_s : std::min(lo, s.work_s);
      hi = std::max(hi, s.work_s);
    }
    const std::string where = "core-sharing fit at " + std::to_string(level) + " ranks per core";
    if (a.size() < 2 || !(hi > lo)) {
      return invalid_argument(where + ": need timings at two or more distinct work sizes");
    }
    Row x{};
    // A slope under half the unshared rate is no measurement of compute (it
    // would run twice as fast shared as alone): a stall inflated the small
    // work's rounds (a quick calibration on a loaded host gave 0.08).
    constexpr double kLeastSlowdown = 0.5;
    if (!fit_nonnegative(a, t, {true, true, false}, 1, &x) || x[1] < kLeastSlowdown) {
      // Noise (a quick calibration on a loaded machine) left no slope: as the
      // other noisy fits, fall back to the plain rate of the largest work,
      // all of its round counted as slowed compute.
      size_t largest = 0;
      for (size_t i = 1; i < a.size(); ++i) {
        if (a[i][1] > a[largest][1]) largest = i;
      }
      x = {0, t[largest] / a[largest][1], 0};
    }
    CoreSharingPoint point{level, x[1], x[0]};
    // Note [Work between meetings]: each probed size's own slowdown, the
    // median of its timings, after the fitted hand-off.
    std::vector<double> works;
    for (const SharingSample& s : samples) {
      if (s.ranks_per_core == level && s.round_s > 0 && s.work_s > 0 &&
          std::find(works.begin(), works.end(), s.work_s) == works.end()) {
        works.push_back(s.work_s);
      }
    }
    std::sort(works.begin(), works.end());
    for (const double w : works) {
      std::vector<double> at;
      for (const SharingSample& s : samples) {
        if (s.ranks_per_core == level && s.work_s == w && s.round_s > 0) {
          at.push_back(std::max(0.0, s.round_s - point.handoff_s) / (std::max(1.0, level) * w));
        }
      }
      const double slowdown = median_of(at);
      if (slowdown > 0) point.by_work.push_back({w, slowdown});
    }
    out.push_back(point);
  }
  return out;
}

double median_of(std::vector<double> v) {
  if (v.empty()) return 0;
  const size_t mid = v.size() / 2;
  std::nth_element(v.begin(), v.begin() + static_cast<long>(mid), v.end());
  const double upper = v[mid];
  if (v.size() % 2 == 1) return upper;
  return (upper + *std::max_element(v.begin(), v.begin() + static_cast<long>(mid))) / 2;
}

}  // namespace kiln::plan
