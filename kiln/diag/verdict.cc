#include "kiln/diag/verdict.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <optional>

namespace kiln::diag {
namespace {

std::string pct(double f) { return fmt::format("{:.0f}%", 100 * f); }
std::string ms(double s) { return fmt::format("{:.1f} ms", 1e3 * s); }
std::string rate(double bps) {
  if (bps >= 1e9) return fmt::format("{:.2f} GB/s", bps / 1e9);
  if (bps >= 1e6) return fmt::format("{:.0f} MB/s", bps / 1e6);
  return fmt::format("{:.0f} kB/s", bps / 1e3);
}
std::string gib(double b) { return fmt::format("{:.1f} GiB", b / (1024.0 * 1024 * 1024)); }

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double compute_s(const RankSummary& r) {
  return r.phase(Phase::kForward) + r.phase(Phase::kBackward) + r.phase(Phase::kOptimizer);
}

struct Spread {
  double mean = 0, lo = 0, hi = 0;
};
Spread fraction_spread(std::span<const RankSummary> ranks, Phase p) {
  Spread s{0, 1e300, -1e300};
  for (const auto& r : ranks) {
    double f = r.fraction(p);
    s.mean += f;
    s.lo = std::min(s.lo, f);
    s.hi = std::max(s.hi, f);
  }
  s.mean /= static_cast<double>(ranks.size());
  return s;
}

// "31% of the step on all 2 ranks (28-34%)" or "... (mean over 2 ranks, 0-62%)".
std::string across(std::span<const RankSummary> ranks, const Spread& s, double threshold) {
  if (ranks.size() == 1) return pct(s.mean) + " of the step";
  std::string where = s.lo >= threshold ? fmt::format("on all {} ranks", ranks.size())
                                        : fmt::format("mean over {} ranks", ranks.size());
  return fmt::format("{} of the step {} ({}-{})", pct(s.mean), where, pct(s.lo), pct(s.hi));
}

std::string phase_breakdown(const RankSummary& r) {
  std::string out;
  for (int i = 0; i < kPhaseCount; ++i) {
    auto p = static_cast<Phase>(i);
    if (!out.empty()) out += ", ";
    out += fmt::format("{} {}", phase_name(p), pct(r.fraction(p)));
  }
  return out;
}

// Mean of a system field over ranks that know it; -1 if none does.
double mean_known(std::span<const RankSummary> ranks, double RankSummary::*f) {
  double sum = 0;
  int n = 0;
  for (const auto& r : ranks) {
    if (r.*f >= 0) {
      sum += r.*f;
      ++n;
    }
  }
  return n > 0 ? sum / n : -1;
}
double max_known(std::span<const RankSummary> ranks, double RankSummary::*f) {
  double m = -1;
  for (const auto& r : ranks) m = std::max(m, r.*f);
  return m;
}

bool memory_verdict(std::span<const RankSummary> ranks, const VerdictOptions& o, Verdict* v) {
  for (const auto& r : ranks) {
    if (r.mem_total_bytes > 0 && r.mem_available_bytes >= 0 &&
        r.mem_available_bytes < o.memory_available_min * r.mem_total_bytes) {
      v->verdict = "memory";
      v->rank = static_cast<int>(r.rank);
      v->evidence.push_back(fmt::format(
          "rank {}'s host has {} available of {} ({}); the process holds {} resident", r.rank,
          gib(r.mem_available_bytes), gib(r.mem_total_bytes),
          pct(r.mem_available_bytes / r.mem_total_bytes), gib(std::max(0.0, r.rss_bytes))));
      v->next =
          "reduce the batch or the loader's in-memory cache and prefetch depth, or check for "
          "a leak (is RSS growing between summaries?)";
      return true;
    }
    if (r.gpu_mem_frac > o.gpu_memory_max) {
      v->verdict = "memory";
      v->rank = static_cast<int>(r.rank);
      v->evidence.push_back(
          fmt::format("rank {}'s accelerator memory is {} used", r.rank, pct(r.gpu_mem_frac)));
      v->next =
          "use mixed precision or activation checkpointing, or a smaller micro-batch with "
          "gradient accumulation";
      return true;
    }
  }
  return false;
}

// Note [A straggler is persistent]: on a shared machine any rank is the
// slowest now and then (another process takes its core for a while), and a
// verdict built on one such stretch names a different rank every run. A
// straggler is the same rank slowest in most windows of the run, by an
// excess its own steps' jitter cannot explain.
struct Straggler {
  size_t index = 0;  // into ranks
  double excess_s = 0;  // own time over the others' median
  double med_own = 0, med_step = 0, noise_s = 0;
  int slowest_windows = 0, windows = 0;
  Phase worst = Phase::kForward;
  double worst_excess = 0;
};

// The rank index slowest by own time among `ranks` (which have steps).
size_t slowest_index(std::span<const RankSummary> ranks) {
  size_t slow = 0;
  for (size_t i = 1; i < ranks.size(); ++i) {
    if (ranks[i].own_s() > ranks[slow].own_s()) slow = i;
  }
  return slow;
}

std::optional<Straggler> find_straggler(std::span<const RankSummary> ranks,
                                        std::span<const std::vector<RankSummary>> windows,
                                        const VerdictOptions& o) {
  if (ranks.size() < 2) return std::nullopt;
  Straggler st;
  st.index = slowest_index(ranks);
  const RankSummary& s = ranks[st.index];
  std::vector<double> others_own, others_step, noise;
  for (size_t i = 0; i < ranks.size(); ++i) {
    noise.push_back(ranks[i].own_s_stddev);
    if (i == st.index) continue;
    others_own.push_back(ranks[i].own_s());
    others_step.push_back(ranks[i].step_s_mean);
  }
  st.med_own = median(others_own);
  st.med_step = median(others_step);
  st.noise_s = median(noise);
  st.excess_s = s.own_s() - st.med_own;
  if (st.med_own <= 0 || s.own_s() < o.straggler_ratio * st.med_own ||
      st.excess_s < o.straggler_min_excess * st.med_step ||
      st.excess_s < o.straggler_noise_margin * st.noise_s) {
    return std::nullopt;
  }
  for (const auto& w : windows) {
    std::vector<RankSummary> live;
    for (const auto& r : w) {
      if (r.steps > 0 && r.step_s_mean > 0) live.push_back(r);
    }
    if (live.size() < 2) continue;
    ++st.windows;
    if (live[slowest_index(live)].rank == s.rank) ++st.slowest_windows;
  }
  if (st.windows > 0 && st.slowest_windows < o.straggler_persistence * st.windows) {
    return std::nullopt;
  }
  // Which phase carries the extra time: the one furthest above the others'.
  st.worst_excess = -1;
  for (Phase p : {Phase::kDataWait, Phase::kForward, Phase::kBackward, Phase::kOptimizer,
                  Phase::kCheckpointStall, Phase::kOther}) {
    std::vector<double> o_p;
    for (size_t i = 0; i < ranks.size(); ++i) {
      if (i != st.index) o_p.push_back(ranks[i].phase(p));
    }
    double excess = s.phase(p) - median(o_p);
    if (excess > st.worst_excess) {
      st.worst_excess = excess;
      st.worst = p;
    }
  }
  if (st.worst == Phase::kCheckpointStall &&
      fraction_spread(ranks, Phase::kCheckpointStall).mean >= o.checkpoint_fraction) {
    return std::nullopt;  // checkpoints stall everyone; rank 0 just does more (see verdict.h)
  }
  return st;
}

void describe_straggler(std::span<const RankSummary> ranks, const Straggler& st, Verdict* v) {
  const RankSummary& s = ranks[st.index];
  v->rank = static_cast<int>(s.rank);
  std::vector<double> others_compute;
  double others_wait = 0;
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (i == st.index) continue;
    others_compute.push_back(compute_s(ranks[i]));
    others_wait += ranks[i].fraction(Phase::kExposedComm);
  }
  others_wait /= static_cast<double>(others_compute.size());
  const Phase worst = st.worst;
  const bool compute =
      worst == Phase::kForward || worst == Phase::kBackward || worst == Phase::kOptimizer;
  const double med_compute = median(others_compute);
  if (compute && med_compute > 0) {
    v->evidence.push_back(fmt::format(
        "rank {}'s compute (forward+backward+optimizer) is {:.1f}x the median of the other "
        "ranks ({} vs {} per step)",
        s.rank, compute_s(s) / med_compute, ms(compute_s(s)), ms(med_compute)));
  } else {
    v->evidence.push_back(fmt::format("rank {}'s {} is {} per step, {} more than the other ranks'",
                                      s.rank, phase_name(worst), ms(s.phase(worst)),
                                      ms(st.worst_excess)));
  }
  v->evidence.push_back(fmt::format(
      "rank {}'s own time (step less exposed comm) is {:.1f}x the others' median ({} vs {})",
      s.rank, s.own_s() / st.med_own, ms(s.own_s()), ms(st.med_own)));
  if (st.windows > 0) {
    v->evidence.push_back(fmt::format(
        "it is the slowest rank in {} of {} windows, {} above the others where step-to-step "
        "noise is {}",
        st.slowest_windows, st.windows, ms(st.excess_s), ms(st.noise_s)));
  }
  v->evidence.push_back(fmt::format(
      "the other ranks spend {} of their step waiting in exposed comm", pct(others_wait)));
  if (compute) {
    v->next = fmt::format(
        "check rank {}'s host: other processes, CPU frequency or throttling, its accelerator; "
        "or exclude it",
        s.rank);
  } else if (worst == Phase::kDataWait) {
    v->next =
        fmt::format("check rank {}'s loader: its cache, disk and network to the data tier", s.rank);
  } else {
    v->next =
        fmt::format("check rank {}'s host (its {} time stands out)", s.rank, phase_name(worst));
  }
}

void compute_verdict(std::span<const RankSummary> ranks, Verdict* v) {
  v->verdict = "compute";
  const RankSummary& r0 = ranks.front();
  double f = 0;
  for (const auto& r : ranks) f += compute_s(r) / std::max(r.step_s_mean, 1e-12);
  f /= static_cast<double>(ranks.size());
  v->evidence.push_back(
      fmt::format("compute (forward+backward+optimizer) is {} of the step", pct(f)));
  v->evidence.push_back(fmt::format("rank {}: {}", r0.rank, phase_breakdown(r0)));
  v->next =
      "the step is compute-bound: a larger batch per rank, mixed precision, better kernels or "
      "more ranks";
}

}  // namespace

RuleOfThumb rule_of_thumb(std::span<const RankSummary> ranks) {
  RuleOfThumb rule;
  double gpu = mean_known(ranks, &RankSummary::gpu_util);
  double accel = gpu;
  std::string accel_name = "accelerator utilisation";
  if (accel < 0) {
    // No NVML: the CPUs are the accelerator of a CPU run.
    double cores = mean_known(ranks, &RankSummary::cpu_cores);
    double count = mean_known(ranks, &RankSummary::cpu_count);
    if (cores >= 0 && count > 0) accel = std::min(1.0, cores / count);
    accel_name = "accelerator n/a; process CPU utilisation";
  }
  const double disk = max_known(ranks, &RankSummary::disk_util);
  const double net = max_known(ranks, &RankSummary::net_util);
  const double gmem = max_known(ranks, &RankSummary::gpu_mem_frac);
  auto known = [](double x) { return x >= 0 ? pct(x) : std::string("unknown"); };
  rule.reason = fmt::format("{} {}, disk busy {}, network {}, accelerator memory {}", accel_name,
                            known(accel), known(disk), known(net), known(gmem));
  if (accel < 0) {
    rule.verdict = "unknown";
  } else if (accel < 0.70) {
    rule.verdict = disk > 0.80 ? "storage" : net > 0.80 ? "network" : "cpu";
  } else if (gmem > 0.95) {
    rule.verdict = "memory";
  } else {
    rule.verdict = "compute";
  }
  return rule;
}

Verdict decide(std::span<const RankSummary> all, const VerdictOptions& o,
               std::span<const std::vector<RankSummary>> windows) {
  std::vector<RankSummary> live;
  for (const auto& r : all) {
    if (r.steps > 0 && r.step_s_mean > 0) live.push_back(r);
  }
  std::sort(live.begin(), live.end(),
            [](const RankSummary& a, const RankSummary& b) { return a.rank < b.rank; });
  Verdict v;
  v.world_size = static_cast<int>(live.size());
  if (live.empty()) {
    v.verdict = "unknown";
    v.evidence.push_back("no steps recorded");
    v.next = "run longer, or check that the trace directory holds rank-*/metrics.jsonl";
    return v;
  }
  std::span<const RankSummary> ranks(live);
  for (const auto& r : ranks) {
    v.steps += r.steps;
    v.step_s += r.step_s_mean;
  }
  v.step_s /= static_cast<double>(ranks.size());
  for (int i = 0; i < kPhaseCount; ++i) {
    v.phase_fractions[phase_name(static_cast<Phase>(i))] =
        fraction_spread(ranks, static_cast<Phase>(i)).mean;
  }
  v.rule = rule_of_thumb(ranks);
  if (memory_verdict(ranks, o, &v)) return v;

  // Note [Ranking causes by the time they cost]: several causes can pass
  // their thresholds at once (a data wait on every rank and one rank slower
  // than the others). The one to name is the one whose removal shortens the
  // step most: a straggler costs the others its excess own time; data wait
  // and checkpoint stall cost their mean; exposed comm costs what the rank
  // that waits least waits (the rest is waiting for a slower rank).
  const Spread ck = fraction_spread(ranks, Phase::kCheckpointStall);
  const Spread data = fraction_spread(ranks, Phase::kDataWait);
  const Spread comm = fraction_spread(ranks, Phase::kExposedComm);
  std::optional<Straggler> straggler = find_straggler(ranks, windows, o);
  if (straggler) {
    v.ranking.push_back({"straggler", straggler->excess_s / v.step_s,
                         static_cast<int>(ranks[straggler->index].rank)});
  }
  if (ck.mean >= o.checkpoint_fraction) v.ranking.push_back({"checkpoint", ck.mean});
  if (data.mean >= o.data_fraction) v.ranking.push_back({"data", data.mean});
  if (comm.lo >= o.comm_fraction) v.ranking.push_back({"comm", comm.lo});
  std::stable_sort(v.ranking.begin(), v.ranking.end(),
                   [](const Candidate& a, const Candidate& b) { return a.saves > b.saves; });
  if (v.ranking.empty()) {
    compute_verdict(ranks, &v);
    return v;
  }
  v.verdict = v.ranking.front().verdict;
  if (v.verdict == "straggler") {
    describe_straggler(ranks, *straggler, &v);
  } else if (v.verdict == "checkpoint") {
    double stall = 0;
    for (const auto& r : ranks) stall += r.phase(Phase::kCheckpointStall);
    v.evidence.push_back("checkpoint stall is " + across(ranks, ck, o.checkpoint_fraction));
    v.evidence.push_back(fmt::format("the training loop stops for {} per step on average",
                                     ms(stall / static_cast<double>(ranks.size()))));
    double wr = mean_known(ranks, &RankSummary::disk_write_Bps);
    if (wr >= 0) v.evidence.push_back("the process writes to storage at " + rate(wr));
    v.next =
        "save asynchronously (stage a copy, write in the background) or less often (kiln plan "
        "suggests an interval)";
  } else if (v.verdict == "data") {
    v.evidence.push_back("data wait is " + across(ranks, data, o.data_fraction));
    double hit = mean_known(ranks, &RankSummary::cache_hit_rate);
    if (hit >= 0) v.evidence.push_back("loader cache hit rate " + pct(hit));
    double rd = mean_known(ranks, &RankSummary::disk_read_Bps);
    if (rd >= 0) v.evidence.push_back("the process reads storage at " + rate(rd));
    double rx = mean_known(ranks, &RankSummary::net_rx_Bps);
    if (rx >= 0) v.evidence.push_back("network receive " + rate(rx));
    v.next = "raise the loader's prefetch depth or worker count, or the cache capacity";
    if (hit >= 0 && hit < 0.5) v.next += "; the cache misses most reads: raise its capacity first";
  } else {
    v.evidence.push_back("exposed comm is " + across(ranks, comm, o.comm_fraction));
    double bytes = 0, secs = 0;
    for (const auto& r : ranks) {
      bytes += r.comm_bytes_per_step;
      secs += r.comm_s_per_step;
    }
    if (bytes > 0 && secs > 0) {
      v.evidence.push_back(fmt::format("gradient sync moves {:.1f} MB per step at {} achieved",
                                       bytes / static_cast<double>(ranks.size()) / 1e6,
                                       rate(bytes / secs)));
    }
    const double per_step = mean_known(ranks, &RankSummary::collectives_per_step);
    const double bw = mean_known(ranks, &RankSummary::collective_Bps);
    if (per_step > 0 && bw > 0) {
      v.evidence.push_back(fmt::format(
          "{:.0f} collectives per step, the largest {:.1f} MB, each at {} while it runs",
          per_step, max_known(ranks, &RankSummary::collective_bytes_max) / 1e6, rate(bw)));
    }
    double net = max_known(ranks, &RankSummary::net_util);
    if (net >= 0) v.evidence.push_back("busiest network link at " + pct(net) + " of its speed");
    v.next =
        "overlap more of the gradient sync with backward (smaller buckets), compress gradients "
        "(bf16), or check the network between the ranks";
  }
  v.evidence.push_back(fmt::format("removing it would save about {} of the step{}",
                                   pct(v.ranking.front().saves), [&] {
                                     std::string rest;
                                     for (size_t i = 1; i < v.ranking.size(); ++i) {
                                       rest += fmt::format("{}{} {}", i == 1 ? "; then " : ", ",
                                                           v.ranking[i].verdict,
                                                           pct(v.ranking[i].saves));
                                     }
                                     return rest;
                                   }()));
  return v;
}

nlohmann::json verdict_to_json(const Verdict& v) {
  nlohmann::json j = {{"verdict", v.verdict},
                      {"evidence", v.evidence},
                      {"next", v.next},
                      {"world_size", v.world_size},
                      {"steps", v.steps},
                      {"step_s", v.step_s},
                      {"phase_fractions", v.phase_fractions},
                      {"rule_of_thumb", {{"verdict", v.rule.verdict}, {"reason", v.rule.reason}}}};
  if (v.rank >= 0) j["rank"] = v.rank;
  nlohmann::json ranking = nlohmann::json::array();
  for (const auto& c : v.ranking) {
    nlohmann::json e = {{"verdict", c.verdict}, {"saves", c.saves}};
    if (c.rank >= 0) e["rank"] = c.rank;
    ranking.push_back(std::move(e));
  }
  j["ranking"] = std::move(ranking);
  return j;
}

std::string verdict_line(const Verdict& v) {
  std::string out = "bottleneck: " + v.verdict;
  if (!v.evidence.empty()) out += " (" + v.evidence.front() + ")";
  out += "; next: " + v.next + " | rule of thumb: " + v.rule.verdict;
  return out;
}

}  // namespace kiln::diag
