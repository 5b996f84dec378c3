#include "kiln/plan/host_profile.h"

#include <toml++/toml.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <sstream>
#include <vector>

#include "kiln/base/config/toml_reader.h"

namespace kiln::plan {

namespace {

using config::TomlReader;

// Note [Profile format version]: a reader refuses a version it does not
// know rather than guess what renamed or re-scaled fields mean.
constexpr std::int64_t kProfileVersion = 1;

// The ranks per core [core_sharing] is measured at (Note [Core sharing]).
constexpr int kSharingRanksPerCore[] = {1, 2, 4};

constexpr double kGiga = 1e9;
constexpr double kMicro = 1e-6;
constexpr double kNano = 1e-9;

// Note [Profile fields]: every field of a compute section, its TOML key and
// unit, in one table so that reading, writing and the docs cannot drift.
struct Field {
  const char* key;
  double scale;  // TOML value × scale = SI value
  bool positive; // a rate (must be > 0), else a cost (>= 0)
  double* (*member)(ComputeRates&);
};

#define KILN_FIELD(key, scale, positive, expr) \
  Field { key, scale, positive, [](ComputeRates& c) { return &(c.expr); } }

const std::vector<Field>& compute_fields() {
  static const std::vector<Field> fields = {
      KILN_FIELD("linear_fwd_call_us", kMicro, false, linear_fwd.call_s),
      KILN_FIELD("linear_fwd_gflops", kGiga, true, linear_fwd.flops),
      KILN_FIELD("linear_fwd_gbytes_per_s", kGiga, false, linear_fwd.bytes_per_s),
      KILN_FIELD("linear_bwd_call_us", kMicro, false, linear_bwd.call_s),
      KILN_FIELD("linear_bwd_gflops", kGiga, true, linear_bwd.flops),
      KILN_FIELD("linear_bwd_gbytes_per_s", kGiga, false, linear_bwd.bytes_per_s),
      KILN_FIELD("attention_fwd_call_us", kMicro, false, attention_fwd.call_s),
      KILN_FIELD("attention_fwd_gflops", kGiga, true, attention_fwd.flops),
      KILN_FIELD("attention_fwd_ns_per_score", kNano, false, attention_fwd.score_s),
      KILN_FIELD("attention_bwd_call_us", kMicro, false, attention_bwd.call_s),
      KILN_FIELD("attention_bwd_gflops", kGiga, true, attention_bwd.flops),
      KILN_FIELD("attention_bwd_ns_per_score", kNano, false, attention_bwd.score_s),
      KILN_FIELD("layer_norm_fwd_us", kMicro, false, layer_norm_fwd.fixed_s),
      KILN_FIELD("layer_norm_fwd_ns", kNano, false, layer_norm_fwd.per_unit_s),
      KILN_FIELD("layer_norm_bwd_us", kMicro, false, layer_norm_bwd.fixed_s),
      KILN_FIELD("layer_norm_bwd_ns", kNano, false, layer_norm_bwd.per_unit_s),
      KILN_FIELD("gelu_fwd_us", kMicro, false, gelu_fwd.fixed_s),
      KILN_FIELD("gelu_fwd_ns", kNano, false, gelu_fwd.per_unit_s),
      KILN_FIELD("gelu_bwd_us", kMicro, false, gelu_bwd.fixed_s),
      KILN_FIELD("gelu_bwd_ns", kNano, false, gelu_bwd.per_unit_s),
      KILN_FIELD("rotary_fwd_us", kMicro, false, rotary_fwd.fixed_s),
      KILN_FIELD("rotary_fwd_ns", kNano, false, rotary_fwd.per_unit_s),
      KILN_FIELD("rotary_bwd_us", kMicro, false, rotary_bwd.fixed_s),
      KILN_FIELD("rotary_bwd_ns", kNano, false, rotary_bwd.per_unit_s),
      KILN_FIELD("add_us", kMicro, false, add.fixed_s),
      KILN_FIELD("add_ns", kNano, false, add.per_unit_s),
      KILN_FIELD("loss_fwd_us", kMicro, false, loss_fwd.fixed_s),
      KILN_FIELD("loss_fwd_ns", kNano, false, loss_fwd.per_unit_s),
      KILN_FIELD("loss_bwd_us", kMicro, false, loss_bwd.fixed_s),
      KILN_FIELD("loss_bwd_ns", kNano, false, loss_bwd.per_unit_s),
      KILN_FIELD("embedding_fwd_us", kMicro, false, embedding_fwd.fixed_s),
      KILN_FIELD("embedding_fwd_ns", kNano, false, embedding_fwd.per_unit_s),
      KILN_FIELD("embedding_bwd_us", kMicro, false, embedding_bwd.fixed_s),
      KILN_FIELD("embedding_bwd_ns", kNano, false, embedding_bwd.per_unit_s),
      KILN_FIELD("optimizer_us", kMicro, false, optimizer_per_tensor.fixed_s),
      KILN_FIELD("optimizer_us_per_tensor", kMicro, false, optimizer_per_tensor.per_unit_s),
      KILN_FIELD("optimizer_ns_per_param", kNano, false, optimizer_param_s),
      KILN_FIELD("op_overhead_us", kMicro, false, op_overhead_s),
  };
  return fields;
}
#undef KILN_FIELD

ComputeRates read_compute(TomlReader& r, const std::string& section, int threads_fallback) {
  ComputeRates c;
  c.threads = static_cast<int>(r.get_int(section, "threads", true, threads_fallback));
  for (const Field& f : compute_fields()) {
    *f.member(c) = (f.positive ? r.get_double(section, f.key, true, 1)
                               : r.get_nonnegative(section, f.key, 0)) *
                   f.scale;
  }
  return c;
}

LinkRates read_link(TomlReader& r, const std::string& section) {
  LinkRates l;
  l.alpha_s = r.get_nonnegative(section, "alpha_us", 0) * kMicro;
  l.bytes_per_s = r.get_double(section, "gbytes_per_s", true, 1) * kGiga;
  return l;
}

Result<HostProfile> from_table(const toml::table& root, const std::string& source) {
  TomlReader r(root, source);
  HostProfile p;
  p.source = "profile " + source;
  const std::int64_t version = r.get_int("profile", "version", true, kProfileVersion);
  if (r.status().is_ok() && version != kProfileVersion) {
    r.fail_field("profile", "version",
                 "is " + std::to_string(version) + " but this kiln reads version " +
                     std::to_string(kProfileVersion) + " (recalibrate: kiln plan calibrate)");
  }
  r.get_string("profile", "written_by", false, "");
  p.host = r.get_string("host", "name", false, "");
  p.cpu = r.get_string("host", "cpu", false, "");
  p.blas = r.get_string("host", "blas", false, "");
  p.measured_at = r.get_string("host", "measured_at", false, "");
  p.cores = static_cast<int>(r.get_int("host", "cores", true, 1));
  p.memory_bytes = r.get_double("host", "memory_gib", true, 1) * (1ull << 30);
  p.one_thread = read_compute(r, "compute_1_thread", 1);
  p.all_threads = read_compute(r, "compute_all_threads", p.cores);
  p.stream_bytes_per_s = r.get_double("memory", "stream_gbytes_per_s", true, 1) * kGiga;
  p.stream_all_bytes_per_s = r.get_double("memory", "stream_all_gbytes_per_s", true, 1) * kGiga;
  p.shm = read_link(r, "link_shm");
  p.tcp = read_link(r, "link_tcp");
  // [core_sharing]: optional (profiles before it was measured lack it).
  for (const int n : kSharingRanksPerCore) {
    const std::string slow = "slowdown_" + std::to_string(n);
    const std::string handoff = "handoff_us_" + std::to_string(n);
    const std::string independent = "independent_slowdown_" + std::to_string(n);
    if (!r.has("core_sharing", slow) && !r.has("core_sharing", handoff)) {
      // Without its level's slowdown_N it has no point to join.
      if (r.has("core_sharing", independent)) {
        r.fail_field("core_sharing", independent, "needs slowdown_" + std::to_string(n));
      }
      continue;
    }
    CoreSharingPoint point;
    point.ranks_per_core = n;
    point.slowdown = r.get_double("core_sharing", slow, true, 1);
    point.handoff_s = r.get_nonnegative("core_sharing", handoff, 0) * kMicro;
    if (r.has("core_sharing", independent)) {
      point.independent_slowdown = r.get_double("core_sharing", independent, true, 1);
    }
    // Note [Work between meetings]: the pairs' slowdown per probed work size.
    const std::string works_key = "work_us_" + std::to_string(n);
    const std::string at_key = "slowdown_at_work_" + std::to_string(n);
    if (r.has("core_sharing", works_key) || r.has("core_sharing", at_key)) {
      const std::vector<double> works = r.get_positives("core_sharing", works_key, {});
      const std::vector<double> at = r.get_positives("core_sharing", at_key, {});
      if (r.status().is_ok() && (works.empty() || works.size() != at.size())) {
        r.fail_field("core_sharing", at_key,
                     "needs one value per entry of " + works_key + " (got " +
                         std::to_string(at.size()) + " for " + std::to_string(works.size()) + ")");
      } else if (r.status().is_ok() && !std::is_sorted(works.begin(), works.end(),
                                                       std::less_equal<double>())) {
        r.fail_field("core_sharing", works_key, "must be strictly ascending");
      }
      for (std::size_t i = 0; i < std::min(works.size(), at.size()); ++i) {
        point.by_work.push_back({works[i] * kMicro, at[i]});
      }
    }
    p.sharing.push_back(point);
  }
  // Note [Pipeline hand-off]: written by calibrations of sessions 5-10, no
  // longer read; refused by name rather than priced another way in silence.
  if (const toml::table* old = root["pipeline_handoff"].as_table(); old && !old->empty()) {
    r.fail_field("pipeline_handoff", std::string(old->begin()->first.str()),
                 "is no longer read: a tensor-parallel collective inside a pipeline waits the "
                 "lockstep hand-off of [core_sharing] (Note [Pipeline hand-off], docs/plan.md "
                 "\"Session 11\"); delete the [pipeline_handoff] section");
  }
  if (r.status().is_ok() && p.one_thread.threads != 1) {
    r.fail_field("compute_1_thread", "threads",
                 "must be 1 (got " + std::to_string(p.one_thread.threads) + ")");
  }
  if (r.status().is_ok() && p.all_threads.threads != p.cores) {
    r.fail_field("compute_all_threads", "threads",
                 "must equal host.cores (" + std::to_string(p.cores) + "; got " +
                     std::to_string(p.all_threads.threads) + ")");
  }
  r.check_unknown(
      "[profile], [host], [compute_1_thread], [compute_all_threads], [memory], [link_shm], "
      "[link_tcp], [core_sharing] (slowdown_N, handoff_us_N, independent_slowdown_N, work_us_N, "
      "slowdown_at_work_N for N = 1, 2, 4 ranks per core)",
      "docs/plan.md \"Calibration\"");
  if (!r.status().is_ok()) return r.status().with_context("host profile");
  return p;
}

// Six significant digits: enough for any measured rate, short to read.
std::string num(double v) {
  std::ostringstream out;
  out.precision(6);
  out << v;
  std::string s = out.str();
  // A TOML float needs a '.' or an exponent; "12" would read back as an integer.
  if (s.find_first_of(".eE") == std::string::npos && s.find("inf") == std::string::npos &&
      s.find("nan") == std::string::npos) {
    s += ".0";
  }
  return s;
}

std::string quoted(const std::string& s) {
  std::ostringstream out;
  out << toml::value<std::string>(s);
  return out.str();
}

void write_compute(std::ostringstream& out, const char* section, const char* comment,
                   const ComputeRates& c) {
  out << "\n[" << section << "]  # " << comment << "\n"
      << "threads = " << c.threads << "\n";
  ComputeRates copy = c;
  for (const Field& f : compute_fields()) out << f.key << " = " << num(*f.member(copy) / f.scale) << "\n";
}

void write_link(std::ostringstream& out, const char* section, const char* comment,
                const LinkRates& l) {
  out << "\n[" << section << "]  # " << comment << "\n"
      << "alpha_us = " << num(l.alpha_s / kMicro) << "\n"
      << "gbytes_per_s = " << num(l.bytes_per_s / kGiga) << "\n";
}

}  // namespace

double ProductRate::at(double m, double n, double k) const {
  const double traffic = bytes_per_s > 0 ? 4 * (m * k + k * n + m * n) / bytes_per_s : 0;
  return call_s + 2 * m * n * k / flops + traffic;
}

double AttentionRate::at(double bh, double s, double hd) const {
  return call_s + bh * (4 * s * s * hd / flops + s * s * score_s);
}

const ComputeRates& HostProfile::rates(int threads) const {
  // Two measured points; a thread count in between takes the nearer one
  // (kiln train gives a rank cores / local ranks threads: 1 or all, on the
  // hosts this models).
  if (threads <= 1 || cores <= 1) return one_thread;
  return 2 * (threads - 1) <= cores - 1 ? one_thread : all_threads;
}

namespace {

// Piecewise linear in x over the points, clamped at both ends.
template <typename Point>
double interpolate(const std::vector<Point>& points, double x, double Point::*field,
                   double none) {
  if (points.empty()) return none;
  if (x <= points.front().ranks_per_core) return points.front().*field;
  for (std::size_t i = 1; i < points.size(); ++i) {
    const Point& a = points[i - 1];
    const Point& b = points[i];
    if (x <= b.ranks_per_core) {
      const double f = (x - a.ranks_per_core) / (b.ranks_per_core - a.ranks_per_core);
      return a.*field + f * (b.*field - a.*field);
    }
  }
  return points.back().*field;
}

}  // namespace

double HostProfile::sharing_slowdown(double ranks_per_core) const {
  return interpolate(sharing, ranks_per_core, &CoreSharingPoint::slowdown, 1);
}

double CoreSharingPoint::slowdown_at(double work_s) const {
  if (by_work.empty() || !(work_s > 0)) return slowdown;
  if (work_s <= by_work.front().work_s) return by_work.front().slowdown;
  for (std::size_t i = 1; i < by_work.size(); ++i) {
    const WorkSlowdown& a = by_work[i - 1];
    const WorkSlowdown& b = by_work[i];
    if (work_s <= b.work_s) {
      // Linear in log w: the probed sizes are spaced by factors of 2-4.
      const double f = std::log(work_s / a.work_s) / std::log(b.work_s / a.work_s);
      return a.slowdown + f * (b.slowdown - a.slowdown);
    }
  }
  return by_work.back().slowdown;
}

double HostProfile::sharing_slowdown(double ranks_per_core, double work_s) const {
  std::vector<CoreSharingPoint> points = sharing;
  for (CoreSharingPoint& p : points) p.slowdown = p.slowdown_at(work_s);
  return interpolate(points, ranks_per_core, &CoreSharingPoint::slowdown, 1);
}

double HostProfile::independent_slowdown(double ranks_per_core) const {
  std::vector<CoreSharingPoint> points = sharing;
  for (CoreSharingPoint& p : points) {
    if (!(p.independent_slowdown > 0)) p.independent_slowdown = p.slowdown;
  }
  return interpolate(points, ranks_per_core, &CoreSharingPoint::independent_slowdown, 1);
}

double HostProfile::handoff_s(double ranks_per_core) const {
  return interpolate(sharing, ranks_per_core, &CoreSharingPoint::handoff_s, 0);
}

Result<HostProfile> read_host_profile(const std::string& path) {
  auto root = config::parse_toml(path, true);
  if (!root.is_ok()) return root.status().with_context("host profile");
  return from_table(*root, path);
}

Result<HostProfile> parse_host_profile(std::string_view toml_text, const std::string& source) {
  auto root = config::parse_toml(source, false, std::string(toml_text));
  if (!root.is_ok()) return root.status().with_context("host profile");
  return from_table(*root, source);
}

std::string host_profile_to_toml(const HostProfile& p) {
  std::ostringstream out;
  out << "# A CPU host's measured rates for `kiln plan` (docs/plan.md \"Calibration\").\n"
      << "# Written by `kiln plan calibrate`; every value is a median of repeats.\n"
      << "\n[profile]\nversion = " << kProfileVersion << "\n"
      << "written_by = \"kiln plan calibrate\"\n"
      << "\n[host]\n"
      << "name = " << quoted(p.host) << "\n"
      << "cpu = " << quoted(p.cpu) << "\n"
      << "blas = " << quoted(p.blas) << "\n"
      << "measured_at = " << quoted(p.measured_at) << "\n"
      << "cores = " << p.cores << "\n"
      << "memory_gib = " << num(p.memory_bytes / (1ull << 30)) << "\n";
  write_compute(out, "compute_1_thread",
                "one rank, one intra-op thread: LibTorch fp32 kernels with autograd", p.one_thread);
  write_compute(out, "compute_all_threads", "one rank, one intra-op thread per core",
                p.all_threads);
  out << "\n[memory]  # streaming copy of a buffer far larger than the caches\n"
      << "stream_gbytes_per_s = " << num(p.stream_bytes_per_s / kGiga) << "\n"
      << "stream_all_gbytes_per_s = " << num(p.stream_all_bytes_per_s / kGiga) << "\n";
  write_link(out, "link_shm", "kiln::comm allreduce, 2 ranks, shared memory: t = 2a + S/b",
             p.shm);
  write_link(out, "link_tcp", "kiln::comm allreduce, 2 ranks, TCP over loopback: t = 2a + S/b",
             p.tcp);
  if (!p.sharing.empty()) {
    out << "\n[core_sharing]  # N ranks per core, rounds of compute w and a pair allreduce:\n"
        << "# round = slowdown_N * max(1, N) * w + handoff_N (kiln bench handoff);\n"
        << "# independent_slowdown_N: the same with groups of one (Note [Lockstep partners]);\n"
        << "# slowdown_at_work_N: (round - handoff_N) / (max(1, N) * w) at each work_us_N\n"
        << "# (Note [Work between meetings])\n";
    for (const CoreSharingPoint& c : p.sharing) {
      const int n = static_cast<int>(c.ranks_per_core);
      out << "slowdown_" << n << " = " << num(c.slowdown) << "\n"
          << "handoff_us_" << n << " = " << num(c.handoff_s / kMicro) << "\n";
      if (c.independent_slowdown > 0) {
        out << "independent_slowdown_" << n << " = " << num(c.independent_slowdown) << "\n";
      }
      if (!c.by_work.empty()) {
        std::string works, at;
        for (const WorkSlowdown& w : c.by_work) {
          works += (works.empty() ? "" : ", ") + num(w.work_s / kMicro);
          at += (at.empty() ? "" : ", ") + num(w.slowdown);
        }
        out << "work_us_" << n << " = [" << works << "]\n"
            << "slowdown_at_work_" << n << " = [" << at << "]\n";
      }
    }
  }
  return out.str();
}

}  // namespace kiln::plan
