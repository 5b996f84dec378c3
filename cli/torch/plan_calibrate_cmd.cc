// `kiln plan calibrate`: measure this host and write a profile for `kiln plan`
// (docs/plan.md "Calibration").
//
//   kiln plan calibrate [-o host.toml] [--quick] [--json]
//
// Compute (each kernel class of a GPT block through LibTorch fp32 with
// autograd: linear layers, the attention core, norms, GeLU, rotary, adds,
// cross-entropy, embedding, AdamW) with one thread and with one per core; streaming memory bandwidth; and
// kiln::comm's allreduce over shared memory and over TCP loopback, timed by
// `kiln bench comm` (2 local ranks) and fitted to t = 2α + S/β; and what
// ranks lose when they outnumber the cores (`kiln bench handoff`, Note
// [Core sharing] in kiln/plan/host_profile.h). About a minute; --quick
// (tests) about 20 s on 2 cores.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "kiln/base/fd.h"
#include "kiln/base/fs.h"
#include "kiln/plan/calibration_fit.h"
#include "kiln/plan/host_profile.h"
#include "kiln/plan/host_profile_merge.h"
#include "kiln/plan/probe/compute_probe.h"
#include "kiln/plan/probe/sharing_probe.h"

namespace kiln::cli {
namespace {

struct CalibrateOptions {
  std::string output = "host-profile.toml";
  bool quick = false;
  bool json = false;
  int repeats = 5;
  int probe_repeats = 3;  // repeats of the core-sharing sweep
  std::vector<std::string> merge;  // profiles to merge (medians) instead of measuring
};

// Runs argv (argv[0] a path) with `env` added ("K=V") and `unset` removed,
// and returns its stdout. DeadlineExceeded (the child killed) after
// `timeout`; Internal for a non-zero exit, with the tail of its output.
Result<std::string> run_capture(const std::vector<std::string>& argv,
                                const std::vector<std::string>& env,
                                const std::vector<std::string>& unset,
                                std::chrono::seconds timeout) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return errno_status("kiln plan calibrate: pipe", errno);
  Fd out_read(fds[0]), out_write(fds[1]);
  const pid_t pid = fork();
  if (pid < 0) return errno_status("kiln plan calibrate: fork", errno);
  if (pid == 0) {
    dup2(out_write.get(), STDOUT_FILENO);
    for (const auto& u : unset) unsetenv(u.c_str());
    for (const auto& e : env) {
      const auto eq = e.find('=');
      setenv(e.substr(0, eq).c_str(), e.substr(eq + 1).c_str(), 1);
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  out_write.reset();
  std::string out;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  bool timed_out = false;
  char buf[4096];
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{out_read.get(), POLLIN, 0};
    const int ready = poll(&p, 1, static_cast<int>(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) continue;
    const ssize_t n = read(out_read.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  out_read.reset();
  if (timed_out) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  const std::string what = fmt::format("kiln plan calibrate: {}", fmt::join(argv, " "));
  if (timed_out) return deadline_exceeded(what + fmt::format(": no result within {} s", timeout.count()));
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return internal_error(fmt::format("{}: exited with status {} (output: {})", what, status,
                                      out.substr(out.size() > 500 ? out.size() - 500 : 0)));
  }
  return out;
}

// Fits kiln::comm's allreduce over 2 ranks on `transport` to t = 2α + S/β.
Result<plan::LinkRates> probe_link(const std::string& transport, const CalibrateOptions& o) {
  char exe[4096];
  const ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (len <= 0) return failed_precondition("kiln plan calibrate: cannot find its own executable");
  std::vector<std::string> argv = {std::string(exe, static_cast<size_t>(len)), "bench", "comm",
                                   "-o", "allreduce", "--ranks", "2", "--json",
                                   "-b", "4K", "-e", o.quick ? "256K" : "4M", "-f", "4",
                                   "-n", o.quick ? "5" : "30", "-w", o.quick ? "1" : "5"};
  KILN_ASSIGN_OR_RETURN(std::string out,
                        run_capture(argv, {"KILN_TRANSPORT=" + transport},
                                    {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"},
                                    std::chrono::seconds(60)));
  std::vector<plan::SizeSample> samples;
  try {
    // The JSON document is the last line (rank 0 prints it).
    const auto start = out.rfind("\n{");
    const nlohmann::json doc = nlohmann::json::parse(start == std::string::npos ? out : out.substr(start + 1));
    for (const auto& r : doc.at("results")) {
      samples.push_back({r.at("bytes").get<double>(), r.at("time_us").get<double>() * 1e-6});
    }
  } catch (const std::exception& e) {
    return internal_error(fmt::format("kiln plan calibrate: cannot read kiln bench comm's JSON ({}): {}",
                                      e.what(), out.substr(0, 300)));
  }
  // Note [Noisy fits] (kiln/plan/probe/compute_probe.cc): on a loaded host
  // (a --quick calibration during a build) the sizes can time backwards;
  // the largest size's plain rate stands in for the fit, with no latency
  // term, rather than failing the whole profile.
  auto fit = plan::fit_linear_or_plain_rate(samples);
  if (!fit.is_ok()) return fit.status().with_context(transport + " link probe");
  if (fit->plain_rate) {
    std::fprintf(stderr, "kiln plan calibrate: %s link: the time does not grow with the size; "
                 "using the largest size's rate\n", transport.c_str());
  }
  return plan::LinkRates{fit->fixed_s / 2, fit->bytes_per_s};
}

std::string own_executable() {
  char exe[4096];
  const ssize_t len = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  return len > 0 ? std::string(exe, static_cast<size_t>(len)) : std::string();
}

// Note [Core sharing] (kiln/plan/host_profile.h): `kiln bench handoff
// --sweep` with 1, 2 and 4 ranks per core (an even count: they pair up), one
// run per level measuring every work size in pairs and (not with --quick) in
// groups of one (Note [Lockstep partners]), each round divided by the unit
// timed alone just before its repeat (Note [Drifting hosts]); per level and
// work the median over the repeats, fitted to
// round = slowdown · max(1, ranks/cores) · work + handoff, with each work
// size's own slowdown kept (Note [Work between meetings]).
Result<std::vector<plan::CoreSharingPoint>> probe_sharing(int cores, const CalibrateOptions& o) {
  const std::string exe = own_executable();
  if (exe.empty()) return failed_precondition("kiln plan calibrate: cannot find its own executable");
  // The sweep's unit (~0.35 ms here), timed on one thread to pick unit counts.
  const plan::probe::ProbeOptions po{.quick = o.quick, .repeats = 3};
  KILN_ASSIGN_OR_RETURN(const double unit_s,
                        plan::probe::time_sharing_unit(po, plan::probe::kSweepUnitRows));
  // Work between two meetings: from what a tensor-parallel layer half of the
  // miniature layouts computes (~0.5-4 ms) to a pipeline stage's micro-batch.
  const std::vector<double> works = o.quick ? std::vector<double>{0.5e-3, 2e-3}
                                            : std::vector<double>{0.5e-3, 1e-3, 2e-3, 4e-3, 8e-3};
  std::vector<int> units;
  for (const double w : works) {
    units.push_back(std::max(units.empty() ? 1 : units.back() + 1,
                             static_cast<int>(std::lround(w / unit_s))));
  }
  // --quick (tests): 1 and 2 ranks per core only, pairs only, one repeat.
  const std::vector<int> levels = o.quick ? std::vector<int>{1, 2} : std::vector<int>{1, 2, 4};
  const int repeats = o.quick ? 1 : o.probe_repeats;
  std::vector<plan::SharingSample> pairs, alone;
  for (const int per_core : levels) {
    int ranks = std::max(2, per_core * cores);
    ranks += ranks % 2;
    const double level = static_cast<double>(ranks) / cores;
    // The unit alone with no rank running, seconds before the sweep: the
    // work's absolute scale. The sweep's own unit timings (rank 0, the others
    // asleep) carry the drift between its repeats, but at 4 ranks per core
    // they ran 2.2x slow (Note [Drifting hosts]).
    KILN_ASSIGN_OR_RETURN(const double alone_unit_s,
                          plan::probe::time_sharing_unit(po, plan::probe::kSweepUnitRows));
    std::vector<std::string> argv = {exe, "bench", "handoff", "--ranks", std::to_string(ranks),
                                     "--group", "2", "--sweep", fmt::format("{}", fmt::join(units, ",")),
                                     "--unit-rows", std::to_string(plan::probe::kSweepUnitRows),
                                     "--timing-s", o.quick ? "0.05" : "0.25",
                                     "--repeats", std::to_string(repeats), "--json"};
    if (!o.quick) argv.push_back("--alone");
    KILN_ASSIGN_OR_RETURN(
        std::string out, run_capture(argv, {}, {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"},
                                     std::chrono::seconds(180)));
    try {
      const auto start = out.rfind("\n{");
      const nlohmann::json doc =
          nlohmann::json::parse(start == std::string::npos ? out : out.substr(start + 1));
      const std::vector<double> unit_at = doc.at("unit_s").get<std::vector<double>>();
      const double unit = plan::median_of(unit_at);
      for (const auto& x : doc.at("samples")) {
        const int u = x.at("units").get<int>();
        const std::vector<double> rounds = x.at("round_s").get<std::vector<double>>();
        if (rounds.size() != unit_at.size() || !(unit > 0)) {
          return internal_error("kiln bench handoff --sweep: one round per repeat expected");
        }
        // Each round in units of the unit timed just before it (the drift
        // between repeats), then back to seconds at the sweep's median unit,
        // against work at the unit timed with no rank running.
        std::vector<double> ratios;
        for (std::size_t r = 0; r < rounds.size(); ++r) ratios.push_back(rounds[r] / unit_at[r]);
        // Noise only ever lengthens a timing: of the unit timed alone before
        // the sweep and the sweep's median unit, the shorter is the work's
        // scale (the alone one ran 4x slow on a loaded host, the in-sweep one
        // 2.2x slow at 4 ranks per core).
        const double work_unit_s = std::min(alone_unit_s, unit);
        const plan::SharingSample sample{level, u * work_unit_s, plan::median_of(ratios) * unit};
        (x.at("group").get<int>() == 1 ? alone : pairs).push_back(sample);
        fmt::print(stderr,
                   "kiln plan calibrate: core sharing {} ranks per core, groups of {}, {} units "
                   "({:.2f} ms; in the sweep {:.2f}): {:.3f} ms per round\n",
                   level, x.at("group").get<int>(), u, 1e3 * sample.work_s, 1e3 * u * unit,
                   1e3 * sample.round_s);
      }
    } catch (const std::exception& e) {
      return internal_error(fmt::format(
          "kiln plan calibrate: cannot read kiln bench handoff's JSON ({}): {}", e.what(),
          out.substr(0, 300)));
    }
  }
  KILN_ASSIGN_OR_RETURN(std::vector<plan::CoreSharingPoint> points, plan::fit_core_sharing(pairs));
  if (alone.empty()) return points;
  KILN_ASSIGN_OR_RETURN(const std::vector<plan::CoreSharingPoint> fitted_alone,
                        plan::fit_core_sharing(alone));
  for (plan::CoreSharingPoint& p : points) {
    for (const plan::CoreSharingPoint& a : fitted_alone) {
      if (a.ranks_per_core == p.ranks_per_core) p.independent_slowdown = a.slowdown;
    }
  }
  return points;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "";
}

std::string utc_now() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// --merge: calibrations of this host taken at different times, merged into
// one profile (Note [Drifting hosts], Note [Merging fits]; bench/plan_vs_runtime.py
// spreads them over its measurement window).
Status merge_profiles(const CalibrateOptions& o) {
  std::vector<plan::HostProfile> profiles;
  for (const std::string& path : o.merge) {
    KILN_ASSIGN_OR_RETURN(plan::HostProfile p, plan::read_host_profile(path));
    profiles.push_back(std::move(p));
  }
  KILN_ASSIGN_OR_RETURN(const plan::HostProfile merged,
                        plan::merge_host_profiles(profiles, o.merge));
  const std::string text = plan::host_profile_to_toml(merged);
  KILN_RETURN_IF_ERROR(plan::parse_host_profile(text, o.output).status());
  KILN_RETURN_IF_ERROR(write_file_atomic(o.output, text));
  std::printf("wrote %s: the median of %zu profiles\n", o.output.c_str(), o.merge.size());
  return Status::ok();
}

Status calibrate(const CalibrateOptions& o) {
  if (o.repeats < 1 || o.probe_repeats < 1) {
    return invalid_argument("kiln plan calibrate: --repeats and --probe-repeats must be >= 1");
  }
  if (!o.merge.empty()) return merge_profiles(o);
  // Fail before a minute of measuring, not after.
  const std::filesystem::path dir = std::filesystem::absolute(o.output).parent_path();
  if (access(dir.c_str(), W_OK) != 0) {
    return errno_status("kiln plan calibrate: cannot write -o " + o.output + " (directory " +
                            dir.string() + ")",
                        errno);
  }
  const auto started = std::chrono::steady_clock::now();
  plan::HostProfile p;
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  p.host = host;
  p.cpu = cpu_model();
  p.blas = plan::probe::blas_in_use();
  p.measured_at = utc_now();
  p.cores = static_cast<int>(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
  p.memory_bytes = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));

  const plan::probe::ProbeOptions po{.quick = o.quick, .repeats = o.repeats};
  KILN_ASSIGN_OR_RETURN(plan::probe::ComputeProbe one, plan::probe::probe_compute(1, po));
  KILN_ASSIGN_OR_RETURN(plan::probe::ComputeProbe all, plan::probe::probe_compute(p.cores, po));
  p.one_thread = one.rates;
  p.all_threads = all.rates;
  KILN_ASSIGN_OR_RETURN(p.stream_bytes_per_s, plan::probe::probe_stream(1, po));
  KILN_ASSIGN_OR_RETURN(p.stream_all_bytes_per_s, plan::probe::probe_stream(p.cores, po));
  KILN_ASSIGN_OR_RETURN(p.shm, probe_link("shm", o));
  KILN_ASSIGN_OR_RETURN(p.tcp, probe_link("tcp", o));
  KILN_ASSIGN_OR_RETURN(p.sharing, probe_sharing(p.cores, o));

  const std::string text = plan::host_profile_to_toml(p);
  // Read back before writing: what we write must be what kiln plan reads.
  KILN_RETURN_IF_ERROR(plan::parse_host_profile(text, o.output).status());
  KILN_RETURN_IF_ERROR(write_file_atomic(o.output, text));
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  const plan::ComputeRates& r1 = p.one_thread;
  const plan::ComputeRates& rn = p.all_threads;
  if (o.json) {
    nlohmann::json j = {{"profile", o.output},
                        {"seconds", took},
                        {"linear_gflops_1_thread", r1.linear_fwd.flops / 1e9},
                        {"linear_gflops_all_threads", rn.linear_fwd.flops / 1e9},
                        {"linear_fit_error", std::max(one.linear_fit_error, all.linear_fit_error)},
                        {"attention_gflops_1_thread", r1.attention_fwd.flops / 1e9},
                        {"attention_fit_error",
                         std::max(one.attention_fit_error, all.attention_fit_error)},
                        {"stalled_shapes_1_thread", one.stalled_shapes},
                        {"stalled_shapes_all_threads", all.stalled_shapes},
                        {"gelu_bwd_ns_1_thread", r1.gelu_bwd.per_unit_s * 1e9},
                        {"op_overhead_us", r1.op_overhead_s * 1e6},
                        {"stream_gbytes_per_s", p.stream_bytes_per_s / 1e9},
                        {"shm_alpha_us", p.shm.alpha_s * 1e6},
                        {"shm_gbytes_per_s", p.shm.bytes_per_s / 1e9},
                        {"tcp_alpha_us", p.tcp.alpha_s * 1e6},
                        {"tcp_gbytes_per_s", p.tcp.bytes_per_s / 1e9}};
    for (const plan::CoreSharingPoint& c : p.sharing) {
      j["core_sharing"].push_back({{"ranks_per_core", c.ranks_per_core},
                                   {"slowdown", c.slowdown},
                                   {"handoff_us", c.handoff_s * 1e6},
                                   {"independent_slowdown", c.independent_slowdown}});
    }
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("kiln plan calibrate: %s (%s, %d cores, %s) in %.1f s\n", p.host.c_str(),
                p.cpu.c_str(), p.cores, p.blas.c_str(), took);
    std::printf("  linear layers   %.1f GFLOP/s forward, %.1f backward on 1 thread; %.1f / %.1f on %d "
                "(fit error up to %.1f%%)\n",
                r1.linear_fwd.flops / 1e9, r1.linear_bwd.flops / 1e9, rn.linear_fwd.flops / 1e9,
                rn.linear_bwd.flops / 1e9, p.cores,
                100 * std::max(one.linear_fit_error, all.linear_fit_error));
    std::printf("  stalled shapes  %d on 1 thread, %d on %d, left out of the fits\n", one.stalled_shapes,
                all.stalled_shapes, p.cores);
    std::printf("  attention core  %.1f GFLOP/s + %.2f ns per score forward, %.1f + %.2f backward "
                "(1 thread; fit error up to %.1f%%)\n",
                r1.attention_fwd.flops / 1e9, r1.attention_fwd.score_s * 1e9,
                r1.attention_bwd.flops / 1e9, r1.attention_bwd.score_s * 1e9,
                100 * std::max(one.attention_fit_error, all.attention_fit_error));
    std::printf("  per element     layer norm %.2f/%.2f ns, GeLU %.2f/%.2f, rotary %.2f/%.2f, add %.2f, "
                "cross-entropy %.2f/%.2f (forward/backward, 1 thread)\n",
                r1.layer_norm_fwd.per_unit_s * 1e9, r1.layer_norm_bwd.per_unit_s * 1e9,
                r1.gelu_fwd.per_unit_s * 1e9, r1.gelu_bwd.per_unit_s * 1e9,
                r1.rotary_fwd.per_unit_s * 1e9, r1.rotary_bwd.per_unit_s * 1e9,
                r1.add.per_unit_s * 1e9, r1.loss_fwd.per_unit_s * 1e9, r1.loss_bwd.per_unit_s * 1e9);
    std::printf("  optimizer       %.2f ns per parameter + %.1f us per tensor; %.2f us per op\n",
                r1.optimizer_param_s * 1e9, r1.optimizer_per_tensor.per_unit_s * 1e6,
                r1.op_overhead_s * 1e6);
    std::printf("  memory          %.1f GB/s on 1 thread, %.1f on %d\n", p.stream_bytes_per_s / 1e9,
                p.stream_all_bytes_per_s / 1e9, p.cores);
    std::printf("  kiln::comm shm  alpha %.1f us, beta %.2f GB/s\n", p.shm.alpha_s * 1e6,
                p.shm.bytes_per_s / 1e9);
    std::printf("  kiln::comm tcp  alpha %.1f us, beta %.2f GB/s\n", p.tcp.alpha_s * 1e6,
                p.tcp.bytes_per_s / 1e9);
    for (const plan::CoreSharingPoint& c : p.sharing) {
      std::printf("  core sharing    %.0f ranks per core: compute x%.2f (x%.2f without a partner), "
                  "%.0f us per hand-off\n",
                  c.ranks_per_core, c.slowdown, c.independent_slowdown, c.handoff_s * 1e6);
    }
    std::printf("wrote %s\n", o.output.c_str());
  }
  return Status::ok();
}

const CommandRegistration kRegister("plan", [](CLI::App& parent) {
  auto o = std::make_shared<CalibrateOptions>();
  auto* cmd = parent.add_subcommand(
      "calibrate", "Measure this host (compute, memory, kiln::comm links) and write a profile for kiln plan");
  cmd->add_option("-o,--output", o->output, "profile to write (TOML)")->capture_default_str();
  cmd->add_flag("--quick", o->quick, "a few seconds, rougher (tests)");
  cmd->add_option("--repeats", o->repeats, "timed repeats per point; the median counts")
      ->capture_default_str();
  cmd->add_flag("--json", o->json, "print a JSON summary instead of the report");
  cmd->add_option("--probe-repeats", o->probe_repeats,
                  "repeats of the core-sharing sweep, spread over it")
      ->capture_default_str();
  cmd->add_option("--merge", o->merge,
                  "measure nothing: merge these profiles (calibrations of this host at "
                  "different times: each kernel class, link and core-sharing level from the one "
                  "with the median time) into -o")
      ->expected(1, -1);
  cmd->callback(run_status([o] { return calibrate(*o); }));
});

}  // namespace
}  // namespace kiln::cli
