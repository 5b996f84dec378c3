#include "kiln/plan/host_profile.h"

#include <toml++/toml.h>

#include <algorithm>
#include <sstream>

#include "kiln/base/config/toml_reader.h"

namespace kiln::plan {

namespace {

using config::TomlReader;

// Note [Profile format version]: a reader refuses a version it does not
// know rather than guess what renamed or re-scaled fields mean.
constexpr std::int64_t kProfileVersion = 1;

constexpr double kGiga = 1e9;
constexpr double kMicro = 1e-6;

ComputeRates read_compute(TomlReader& r, const std::string& section, int threads_fallback) {
  ComputeRates c;
  c.threads = static_cast<int>(r.get_int(section, "threads", true, threads_fallback));
  c.gemm_flops = r.get_double(section, "gemm_gflops", true, 1) * kGiga;
  c.gemm_call_s = r.get_nonnegative(section, "gemm_call_us", 0) * kMicro;
  c.gemm_bytes_per_s = r.get_nonnegative(section, "gemm_gbytes_per_s", 0) * kGiga;
  c.bmm_flops = r.get_double(section, "bmm_gflops", true, 1) * kGiga;
  c.bmm_call_s = r.get_nonnegative(section, "bmm_call_us", 0) * kMicro;
  c.bmm_product_s = r.get_nonnegative(section, "bmm_product_us", 0) * kMicro;
  c.elementwise_bytes_per_s = r.get_double(section, "elementwise_gbytes_per_s", true, 1) * kGiga;
  c.op_overhead_s = r.get_nonnegative(section, "op_overhead_us", 0) * kMicro;
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
      "[profile], [host], [compute_1_thread], [compute_all_threads], [memory], [link_shm] or "
      "[link_tcp]",
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
      << "threads = " << c.threads << "\n"
      << "gemm_gflops = " << num(c.gemm_flops / kGiga) << "\n"
      << "gemm_call_us = " << num(c.gemm_call_s / kMicro) << "\n"
      << "gemm_gbytes_per_s = " << num(c.gemm_bytes_per_s / kGiga) << "\n"
      << "bmm_gflops = " << num(c.bmm_flops / kGiga) << "\n"
      << "bmm_call_us = " << num(c.bmm_call_s / kMicro) << "\n"
      << "bmm_product_us = " << num(c.bmm_product_s / kMicro) << "\n"
      << "elementwise_gbytes_per_s = " << num(c.elementwise_bytes_per_s / kGiga) << "\n"
      << "op_overhead_us = " << num(c.op_overhead_s / kMicro) << "\n";
}

void write_link(std::ostringstream& out, const char* section, const char* comment,
                const LinkRates& l) {
  out << "\n[" << section << "]  # " << comment << "\n"
      << "alpha_us = " << num(l.alpha_s / kMicro) << "\n"
      << "gbytes_per_s = " << num(l.bytes_per_s / kGiga) << "\n";
}

}  // namespace

double ComputeRates::gemm_s(double m, double n, double k) const {
  const double flops = 2 * m * n * k;
  const double bytes = 4 * (m * k + k * n + m * n);
  const double traffic = gemm_bytes_per_s > 0 ? bytes / gemm_bytes_per_s : 0;
  return gemm_call_s + flops / gemm_flops + traffic;
}

double ComputeRates::bmm_s(double m, double n, double k, double batch) const {
  return bmm_call_s + batch * (bmm_product_s + 2 * m * n * k / bmm_flops);
}

ComputeRates HostProfile::rates(int threads) const {
  threads = std::clamp(threads, 1, std::max(1, cores));
  if (threads == 1 || cores <= 1) return one_thread;
  if (threads == cores) return all_threads;
  const double f = static_cast<double>(threads - 1) / (cores - 1);
  auto mix = [f](double a, double b) { return a + f * (b - a); };
  ComputeRates c;
  c.threads = threads;
  c.gemm_flops = mix(one_thread.gemm_flops, all_threads.gemm_flops);
  c.gemm_call_s = mix(one_thread.gemm_call_s, all_threads.gemm_call_s);
  c.gemm_bytes_per_s = mix(one_thread.gemm_bytes_per_s, all_threads.gemm_bytes_per_s);
  c.bmm_flops = mix(one_thread.bmm_flops, all_threads.bmm_flops);
  c.bmm_call_s = mix(one_thread.bmm_call_s, all_threads.bmm_call_s);
  c.bmm_product_s = mix(one_thread.bmm_product_s, all_threads.bmm_product_s);
  c.elementwise_bytes_per_s =
      mix(one_thread.elementwise_bytes_per_s, all_threads.elementwise_bytes_per_s);
  c.op_overhead_s = mix(one_thread.op_overhead_s, all_threads.op_overhead_s);
  return c;
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
  write_compute(out, "compute_1_thread", "one rank, one intra-op thread (LibTorch fp32)",
                p.one_thread);
  write_compute(out, "compute_all_threads", "one rank, one intra-op thread per core",
                p.all_threads);
  out << "\n[memory]  # streaming copy of a buffer far larger than the caches\n"
      << "stream_gbytes_per_s = " << num(p.stream_bytes_per_s / kGiga) << "\n"
      << "stream_all_gbytes_per_s = " << num(p.stream_all_bytes_per_s / kGiga) << "\n";
  write_link(out, "link_shm", "kiln::comm allreduce, 2 ranks, shared memory: t = 2a + S/b",
             p.shm);
  write_link(out, "link_tcp", "kiln::comm allreduce, 2 ranks, TCP over loopback: t = 2a + S/b",
             p.tcp);
  return out.str();
}

}  // namespace kiln::plan
