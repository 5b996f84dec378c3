#include "kiln/diag/summary.h"

#include <algorithm>
#include <cmath>
#include <utility>

namespace kiln::diag {
namespace {

// The system fields of RankSummary, averaged over the samples that knew them.
struct SysField {
  const char* name;
  double RankSummary::*member;
  bool is_rate;  // needs two readings (unknown in the first sample)
};
constexpr std::array<SysField, 12> kSysFields = {{
    {"cpu_cores", &RankSummary::cpu_cores, true},
    {"cpu_count", &RankSummary::cpu_count, false},
    {"rss_bytes", &RankSummary::rss_bytes, false},
    {"mem_available_bytes", &RankSummary::mem_available_bytes, false},
    {"mem_total_bytes", &RankSummary::mem_total_bytes, false},
    {"disk_read_Bps", &RankSummary::disk_read_Bps, true},
    {"disk_write_Bps", &RankSummary::disk_write_Bps, true},
    {"disk_util", &RankSummary::disk_util, true},
    {"net_rx_Bps", &RankSummary::net_rx_Bps, true},
    {"net_tx_Bps", &RankSummary::net_tx_Bps, true},
    {"net_util", &RankSummary::net_util, true},
    {"gpu_util", &RankSummary::gpu_util, false},
}};

std::array<double, 12> sys_values(const SystemSample& s) {
  double gpu_util = -1;
  if (s.gpu_available && !s.gpus.empty()) {
    gpu_util = 0;
    for (const auto& g : s.gpus) gpu_util += g.util;
    gpu_util /= static_cast<double>(s.gpus.size());
  }
  return {s.cpu_cores,       static_cast<double>(s.cpu_count),
          s.rss_bytes,       s.mem_available_bytes,
          s.mem_total_bytes, s.disk_read_Bps,
          s.disk_write_Bps,  s.disk_util,
          s.net_rx_Bps(),    s.net_tx_Bps(),
          s.net_util(),      gpu_util};
}

constexpr std::array<std::pair<const char*, double RankSummary::*>, 13> kStepFields = {{
    {"step_s_mean", &RankSummary::step_s_mean},
    {"step_s_median", &RankSummary::step_s_median},
    {"step_s_max", &RankSummary::step_s_max},
    {"samples_per_s", &RankSummary::samples_per_s},
    {"comm_bytes_per_step", &RankSummary::comm_bytes_per_step},
    {"comm_s_per_step", &RankSummary::comm_s_per_step},
    {"cache_hit_rate", &RankSummary::cache_hit_rate},
    {"loss_last", &RankSummary::loss_last},
    {"gpu_mem_frac", &RankSummary::gpu_mem_frac},
    {"collectives_per_step", &RankSummary::collectives_per_step},
    {"collective_bytes_max", &RankSummary::collective_bytes_max},
    {"collective_Bps", &RankSummary::collective_Bps},
    {"own_s_stddev", &RankSummary::own_s_stddev},
}};
constexpr std::array<std::pair<const char*, std::int64_t RankSummary::*>, 5> kIntFields = {{
    {"rank", &RankSummary::rank},
    {"steps", &RankSummary::steps},
    {"first_step", &RankSummary::first_step},
    {"last_step", &RankSummary::last_step},
    {"system_samples", &RankSummary::system_samples},
}};

}  // namespace

void WindowAccumulator::add_step(const StepRecord& r) {
  if (step_s_.empty()) sums_.first_step = r.step;
  sums_.last_step = r.step;
  step_s_.push_back(r.step_s);
  own_s_.push_back(r.step_s - r[Phase::kExposedComm]);
  step_s_sum_ += r.step_s;
  for (const auto& c : r.collectives) {
    collectives_ += 1;
    collective_bytes_ += static_cast<double>(c.bytes);
    collective_s_ += c.seconds;
    sums_.collective_bytes_max = std::max(sums_.collective_bytes_max, static_cast<double>(c.bytes));
  }
  for (int i = 0; i < kPhaseCount; ++i) sums_.phase_s_mean[i] += r.phase_s[i];
  samples_ += static_cast<double>(r.samples);
  if (r.comm_bytes > 0 || r.comm_s > 0) {
    sums_.comm_bytes_per_step += static_cast<double>(r.comm_bytes);
    sums_.comm_s_per_step += r.comm_s;
    ++comm_known_;
  }
  if (r.cache_hit_rate >= 0) {
    sums_.cache_hit_rate += r.cache_hit_rate;
    ++cache_known_;
  }
  sums_.loss_last = r.loss;
}

void WindowAccumulator::add_system(const SystemSample& s) {
  auto v = sys_values(s);
  for (size_t i = 0; i < kSysFields.size(); ++i) {
    if (kSysFields[i].is_rate && s.interval_s <= 0) continue;
    if (v[i] < 0) continue;
    sys_sum_[i] += v[i];
    ++sys_n_[i];
  }
  for (const auto& g : s.gpus) {
    if (g.mem_total_bytes > 0) {
      gpu_mem_frac_max_ = std::max(gpu_mem_frac_max_, g.mem_used_bytes / g.mem_total_bytes);
    }
  }
  ++system_samples_;
}

RankSummary WindowAccumulator::summary() const {
  RankSummary s{};
  s.rank = rank_;
  s.steps = steps();
  s.system_samples = system_samples_;
  for (size_t i = 0; i < kSysFields.size(); ++i) {
    s.*kSysFields[i].member = sys_n_[i] > 0 ? sys_sum_[i] / static_cast<double>(sys_n_[i]) : -1;
  }
  s.gpu_mem_frac = gpu_mem_frac_max_;
  if (step_s_.empty()) return s;
  const double n = static_cast<double>(step_s_.size());
  s.first_step = sums_.first_step;
  s.last_step = sums_.last_step;
  s.step_s_mean = step_s_sum_ / n;
  std::vector<double> sorted = step_s_;
  auto mid = sorted.begin() + static_cast<std::ptrdiff_t>(sorted.size() / 2);
  std::nth_element(sorted.begin(), mid, sorted.end());
  s.step_s_median = *mid;
  s.step_s_max = *std::max_element(step_s_.begin(), step_s_.end());
  for (int i = 0; i < kPhaseCount; ++i) s.phase_s_mean[i] = sums_.phase_s_mean[i] / n;
  s.samples_per_s = step_s_sum_ > 0 ? samples_ / step_s_sum_ : 0;
  if (comm_known_ > 0) {
    s.comm_bytes_per_step = sums_.comm_bytes_per_step / static_cast<double>(comm_known_);
    s.comm_s_per_step = sums_.comm_s_per_step / static_cast<double>(comm_known_);
  }
  s.collectives_per_step = collectives_ / n;
  s.collective_bytes_max = sums_.collective_bytes_max;
  s.collective_Bps = collective_s_ > 0 ? collective_bytes_ / collective_s_ : 0;
  double own_mean = 0, own_var = 0;
  for (double o : own_s_) own_mean += o / n;
  for (double o : own_s_) own_var += (o - own_mean) * (o - own_mean) / n;
  s.own_s_stddev = std::sqrt(own_var);
  s.cache_hit_rate =
      cache_known_ > 0 ? sums_.cache_hit_rate / static_cast<double>(cache_known_) : -1;
  s.loss_last = sums_.loss_last;
  return s;
}

void WindowAccumulator::reset() { *this = WindowAccumulator(rank_); }

nlohmann::json summary_to_json(const RankSummary& s) {
  nlohmann::json j = {{"type", "summary"}};
  for (const auto& [name, m] : kIntFields) j[name] = s.*m;
  for (const auto& [name, m] : kStepFields) j[name] = s.*m;
  nlohmann::json phases = nlohmann::json::object();
  for (int i = 0; i < kPhaseCount; ++i)
    phases[phase_name(static_cast<Phase>(i))] = s.phase_s_mean[i];
  j["phase_s_mean"] = std::move(phases);
  for (const auto& f : kSysFields) j[f.name] = s.*f.member;
  return j;
}

RankSummary summary_from_json(const nlohmann::json& j) {
  RankSummary s{};
  auto num = [&](const char* key, double dflt) {
    auto it = j.find(key);
    return it != j.end() && it->is_number() ? it->get<double>() : dflt;
  };
  for (const auto& [name, m] : kIntFields) s.*m = static_cast<std::int64_t>(num(name, 0));
  for (const auto& [name, m] : kStepFields) s.*m = num(name, s.*m);
  for (const auto& f : kSysFields) s.*f.member = num(f.name, -1);
  if (auto it = j.find("phase_s_mean"); it != j.end() && it->is_object()) {
    for (int i = 0; i < kPhaseCount; ++i) {
      auto p = it->find(phase_name(static_cast<Phase>(i)));
      if (p != it->end() && p->is_number()) s.phase_s_mean[i] = p->get<double>();
    }
  }
  return s;
}

}  // namespace kiln::diag
