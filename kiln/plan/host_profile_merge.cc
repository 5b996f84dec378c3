#include "kiln/plan/host_profile_merge.h"

#include <algorithm>
#include <functional>

#include "kiln/plan/calibration_fit.h"

namespace kiln::plan {
namespace {

// The miniature GPT's shapes (examples/train/gpt_3d.toml: micro-batches of
// 8 sequences of 128 tokens, hidden 128, FFN 512, 4 heads of 32) at which a
// fitted model's median is taken (Note [Merging fits]).
constexpr double kTokens = 1024, kHidden = 128, kFfn = 512, kHeads = 32, kSeq = 128, kHeadDim = 32;
constexpr double kElements = kTokens * kHidden;
constexpr double kLinkBytes = 4 * kElements;  // one activation all-reduce
constexpr double kParams = 1.65e6, kTensors = 100;  // the miniature's optimizer
constexpr double kSharingWork = 2e-3;  // a TP layer half's work between two meetings

// The item whose `time` is the median over `items` (Note [Merging fits]).
// With an even count there is no middle item: the lower middle one, its
// every time scaled by `scaled` so that its time is the mean of the two
// middle ones. (Taking the lower middle whole, as before, merged two
// calibrations into a profile faster than either at every fit: the 2026-12-07
// sitting's merged 1x1x1 step was 1.053 s against 1.097 and 1.165 s from each
// calibration alone.)
template <typename T>
T median_by(const std::vector<const T*>& items, const std::function<double(const T&)>& time,
            const std::function<T(const T&, double)>& scaled) {
  std::vector<const T*> sorted = items;
  std::stable_sort(sorted.begin(), sorted.end(),
                   [&](const T* a, const T* b) { return time(*a) < time(*b); });
  const T& lower = *sorted[(sorted.size() - 1) / 2];
  if (sorted.size() % 2 == 1) return lower;
  const double t_lower = time(lower), t_upper = time(*sorted[sorted.size() / 2]);
  if (!(t_lower > 0)) return lower;
  return scaled(lower, (t_lower + t_upper) / (2 * t_lower));
}

// Each fit with every time it gives scaled by k (its times are linear in
// its coefficients: a time scales, a rate divides).
Affine scaled_affine(const Affine& a, double k) { return {a.fixed_s * k, a.per_unit_s * k}; }
ProductRate scaled_product(const ProductRate& p, double k) {
  return {p.call_s * k, p.flops / k, p.bytes_per_s / k};
}
AttentionRate scaled_attention(const AttentionRate& a, double k) {
  return {a.call_s * k, a.flops / k, a.score_s * k};
}
LinkRates scaled_link(const LinkRates& l, double k) { return {l.alpha_s * k, l.bytes_per_s / k}; }
// A slowdown multiplies the work's time, so scaling it (and the hand-off)
// scales the round's time.
CoreSharingPoint scaled_sharing(const CoreSharingPoint& c, double k) {
  CoreSharingPoint out = c;
  out.slowdown *= k;
  out.handoff_s *= k;
  out.independent_slowdown *= k;
  for (WorkSlowdown& w : out.by_work) w.slowdown *= k;
  return out;
}

template <typename Field>
std::vector<const Field*> each(const std::vector<const ComputeRates*>& rates, Field ComputeRates::*f) {
  std::vector<const Field*> out;
  for (const ComputeRates* r : rates) out.push_back(&(r->*f));
  return out;
}

ComputeRates merge_compute(const std::vector<const ComputeRates*>& rates) {
  ComputeRates out = *rates.front();
  auto product = [&](ProductRate ComputeRates::*f) {
    out.*f = median_by<ProductRate>(
        each(rates, f), [](const ProductRate& p) { return p.at(kTokens, kFfn, kHidden); },
        scaled_product);
  };
  product(&ComputeRates::linear_fwd);
  product(&ComputeRates::linear_bwd);
  auto attention = [&](AttentionRate ComputeRates::*f) {
    out.*f = median_by<AttentionRate>(
        each(rates, f), [](const AttentionRate& a) { return a.at(kHeads, kSeq, kHeadDim); },
        scaled_attention);
  };
  attention(&ComputeRates::attention_fwd);
  attention(&ComputeRates::attention_bwd);
  for (Affine ComputeRates::*f :
       {&ComputeRates::layer_norm_fwd, &ComputeRates::layer_norm_bwd, &ComputeRates::gelu_fwd,
        &ComputeRates::gelu_bwd, &ComputeRates::rotary_fwd, &ComputeRates::rotary_bwd,
        &ComputeRates::add, &ComputeRates::loss_fwd, &ComputeRates::loss_bwd,
        &ComputeRates::embedding_fwd, &ComputeRates::embedding_bwd}) {
    out.*f = median_by<Affine>(
        each(rates, f), [](const Affine& a) { return a.at(kElements); }, scaled_affine);
  }
  // The optimizer's two fits (per tensor, per parameter) together.
  const ComputeRates optimizer = median_by<ComputeRates>(
      rates,
      [](const ComputeRates& r) {
        return r.optimizer_per_tensor.at(kTensors) + kParams * r.optimizer_param_s;
      },
      [](const ComputeRates& r, double k) {
        ComputeRates out = r;
        out.optimizer_per_tensor = scaled_affine(r.optimizer_per_tensor, k);
        out.optimizer_param_s = r.optimizer_param_s * k;
        return out;
      });
  out.optimizer_per_tensor = optimizer.optimizer_per_tensor;
  out.optimizer_param_s = optimizer.optimizer_param_s;
  std::vector<double> overheads;
  for (const ComputeRates* r : rates) overheads.push_back(r->op_overhead_s);
  out.op_overhead_s = median_of(overheads);
  return out;
}

template <typename Point>
std::string levels_of(const std::vector<Point>& points) {
  std::string out;
  for (const Point& p : points) out += (out.empty() ? "" : ", ") + std::to_string(static_cast<int>(p.ranks_per_core));
  return out.empty() ? "none" : out;
}

}  // namespace

Result<HostProfile> merge_host_profiles(const std::vector<HostProfile>& profiles,
                                        const std::vector<std::string>& sources) {
  if (profiles.empty() || profiles.size() != sources.size()) {
    return invalid_argument("merging host profiles: need one or more, each with a name");
  }
  const HostProfile& first = profiles.front();
  for (std::size_t i = 1; i < profiles.size(); ++i) {
    const HostProfile& p = profiles[i];
    const std::string where = "merging host profiles: " + sources[i] + ": ";
    if (p.cores != first.cores) {
      return invalid_argument(where + "host.cores is " + std::to_string(p.cores) + ", " +
                              sources[0] + "'s " + std::to_string(first.cores) +
                              " (profiles of different hosts)");
    }
    if (levels_of(p.sharing) != levels_of(first.sharing)) {
      return invalid_argument(where + "[core_sharing] measured at " + levels_of(p.sharing) +
                              " ranks per core, " + sources[0] + "'s at " + levels_of(first.sharing));
    }
  }
  HostProfile out = first;
  out.source = "median of " + std::to_string(profiles.size()) + " profiles";
  if (profiles.size() > 1) out.measured_at = first.measured_at + " .. " + profiles.back().measured_at;
  std::vector<const ComputeRates*> one, all;
  std::vector<const LinkRates*> shm, tcp;
  std::vector<double> memory, stream, stream_all;
  for (const HostProfile& p : profiles) {
    one.push_back(&p.one_thread);
    all.push_back(&p.all_threads);
    shm.push_back(&p.shm);
    tcp.push_back(&p.tcp);
    memory.push_back(p.memory_bytes);
    stream.push_back(p.stream_bytes_per_s);
    stream_all.push_back(p.stream_all_bytes_per_s);
  }
  out.one_thread = merge_compute(one);
  out.all_threads = merge_compute(all);
  out.memory_bytes = median_of(memory);
  out.stream_bytes_per_s = median_of(stream);
  out.stream_all_bytes_per_s = median_of(stream_all);
  auto link_time = [](const LinkRates& l) { return 2 * l.alpha_s + kLinkBytes / l.bytes_per_s; };
  out.shm = median_by<LinkRates>(shm, link_time, scaled_link);
  out.tcp = median_by<LinkRates>(tcp, link_time, scaled_link);
  // Each level's point whole (its slowdown and hand-off are one fit): the
  // calibration whose pairs' round at 2 ms of work is the median there.
  for (std::size_t k = 0; k < out.sharing.size(); ++k) {
    std::vector<const CoreSharingPoint*> points;
    for (const HostProfile& p : profiles) points.push_back(&p.sharing[k]);
    out.sharing[k] = median_by<CoreSharingPoint>(
        points,
        [](const CoreSharingPoint& c) {
          return c.slowdown * std::max(1.0, c.ranks_per_core) * kSharingWork + c.handoff_s;
        },
        scaled_sharing);
  }
  return out;
}

}  // namespace kiln::plan
