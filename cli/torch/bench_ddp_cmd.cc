// `kiln bench ddp`: how much of the gradient allreduce DDP hides behind
// backward. Typed on its own it starts --ranks local ranks (default 2);
// under a launcher it is one rank (e.g. one per network namespace, see
// bench/ddp_overlap.sh). Both modes train the same MLP on the same data:
//   (a) backward, then one allreduce of all gradients (nothing overlaps);
//   (b) kiln::ddp, buckets allreduced while backward continues.
// Reports backward time, comm time (a's allreduce), exposed comm (b's wait
// after backward), overlap = 1 - exposed/comm, step times and their ratio
// (the median of each step of (b) over the step of (a) before it).
// --check: with (b)'s parameters copied into (a), one more step of each must
// leave the same averaged gradients (to float32, or bfloat16 with --bf16).
// --overlapped-linear: both modes train the same MLP built of
// kiln::ddp::OverlappedLinear layers (weight gradients before input
// gradients; the first layer's weight in --first-layer-slices row blocks,
// the second's in --second-layer-slices) instead of torch::nn::Linear.
#include <time.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/torch/bench_mlp.h"
#include "cli/local_ranks.h"
#include "kiln/base/heap.h"
#include "kiln/base/resource_usage.h"
#include "kiln/comm/process_group.h"
#include "kiln/ddp/distributed_data_parallel.h"
#include "kiln/ddp/overlapped_linear.h"

namespace kiln::cli {
namespace {

struct DdpBenchArgs {
  int width = 4096;
  int layers = 2;  // hidden width x width layers; io -> width -> ... -> io
  int io = 1024;
  int batch = 64;
  int steps = 6;
  int warmup = 2;
  double bucket_mib = 25;
  bool auto_cap = false;
  bool bf16 = false;
  bool json = false;
  bool check = false;
  bool overlapped_linear = false;
  int first_layer_slices = 4;
  int second_layer_slices = 1;
  int ranks = 2;  // when not under a launcher
  // Test-only (hidden): the last rank alters one of DDP's averaged gradients
  // before --check compares, so a test can prove the check catches it.
  bool inject_corruption = false;
  // Hidden: each rank appends its timed steps' phases here (FILE.rankN),
  // "phase start end" in CLOCK_MONOTONIC seconds, so a profile taken with
  // `perf record -k CLOCK_MONOTONIC` can be cut by phase.
  std::string phase_log;
};

using bench::median;
using bench::MlpImpl;
using bench::since;

// MlpImpl's MLP (io -> width -> ... -> io, ReLU between) of
// OverlappedLinear layers; the first layer's weight, whose gradient is the
// step's last, in `first_slices` row blocks, the second's (the gradient on
// the link while the first layer's is computed) in `second_slices`.
struct OverlappedMlpImpl : torch::nn::Module {
  OverlappedMlpImpl(int width, int hidden_layers, int io, int first_slices, int second_slices) {
    auto add = [&](const std::string& name, int in, int out, int slices) {
      layers.push_back(register_module(
          name, ddp::OverlappedLinear(in, out, ddp::OverlappedLinearOptions{true, slices})));
    };
    add("in", io, width, first_slices);
    for (int i = 0; i < hidden_layers; ++i) {
      add(fmt::format("h{}", i), width, width, i == 0 ? second_slices : 1);
    }
    add("out", width, io, 1);
  }
  torch::Tensor forward(torch::Tensor x) {
    for (std::size_t i = 0; i + 1 < layers.size(); ++i) x = torch::relu(layers[i](x));
    return layers.back()(x);
  }
  std::vector<ddp::OverlappedLinear> layers;
};

// The model both modes train: its module and its forward.
struct BenchNet {
  std::shared_ptr<torch::nn::Module> module;
  std::function<torch::Tensor(const torch::Tensor&)> forward;
};

BenchNet make_net(const DdpBenchArgs& a) {
  if (a.overlapped_linear) {
    auto m = std::make_shared<OverlappedMlpImpl>(a.width, a.layers, a.io, a.first_layer_slices,
                                                 a.second_layer_slices);
    return {m, [m](const torch::Tensor& x) { return m->forward(x); }};
  }
  auto m = std::make_shared<MlpImpl>(a.width, a.layers, a.io);
  return {m, [m](const torch::Tensor& x) { return m->forward(x); }};
}

// Seconds on CLOCK_MONOTONIC (steady_clock's clock on Linux, and perf's
// with -k CLOCK_MONOTONIC).
double monotonic_s(Clock::time_point t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

double cpu_seconds(clockid_t clock) {
  timespec ts{};
  clock_gettime(clock, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// CPU per phase of a step, for telling where a slower backward's time went:
// also the times this thread was preempted (runnable while another ran) and
// its page faults (first touches of memory the allocator had given back).
struct CpuMark {
  double thread = cpu_seconds(CLOCK_THREAD_CPUTIME_ID);
  double process = cpu_seconds(CLOCK_PROCESS_CPUTIME_ID);
  ResourceUsage usage = ResourceUsage::of_thread();
  long preempted() const { return usage.involuntary_switches; }
  long faults() const { return usage.minor_faults + usage.major_faults; }
};

// Runs one more step of each mode from the same parameters and compares the
// averaged gradients; every rank learns whether any rank saw a difference.
Status check_gradients(const DdpBenchArgs& a, comm::Communicator& c, torch::nn::Module& net_a,
                       torch::nn::Module& net_b, const std::function<Status(double*, double*)>& step_a,
                       const std::function<Status()>& step_b) {
  {
    torch::NoGradGuard g;
    auto pa = net_a.parameters(), pb = net_b.parameters();
    for (std::size_t i = 0; i < pa.size(); ++i) pa[i].copy_(pb[i]);
  }
  double unused_bwd = 0, unused_comm = 0;
  KILN_RETURN_IF_ERROR(step_a(&unused_bwd, &unused_comm));
  KILN_RETURN_IF_ERROR(step_b());
  auto pa = net_a.parameters(), pb = net_b.parameters();
  if (a.inject_corruption && c.rank() == c.size() - 1) {
    torch::NoGradGuard g;
    pb[0].mutable_grad().view(-1)[0] += 1.0;
  }
  double worst = 0, scale = 0;
  for (std::size_t i = 0; i < pa.size(); ++i) {
    worst = std::max(worst, (pa[i].grad() - pb[i].grad()).abs().max().item<double>());
    scale = std::max(scale, pa[i].grad().abs().max().item<double>());
  }
  // float32 sums in another order (buckets, not one flat buffer) differ in
  // the last bits; bfloat16 keeps 8 bits of mantissa.
  const double tolerance = (a.bf16 ? 1e-2 : 1e-4) * std::max(scale, 1e-12);
  int bad = worst > tolerance ? 1 : 0;
  if (bad) {
    std::fprintf(stderr, "bench ddp: rank %d: DDP's gradients differ from backward + allreduce "
                 "by %g (tolerance %g)\n", c.rank(), worst, tolerance);
  }
  KILN_RETURN_IF_ERROR(c.allreduce(&bad, 1, comm::DataType::kInt32, comm::ReduceOp::kMax)->wait());
  if (bad) return internal_error("bench ddp: --check failed: DDP's averaged gradients differ");
  return Status::ok();
}

Status bench_ddp(const DdpBenchArgs& a) {
  if (a.steps < 1 || a.warmup < 0) {
    return invalid_argument(fmt::format("bench ddp: --steps {} --warmup {}: need --steps >= 1 and --warmup >= 0",
                                        a.steps, a.warmup));
  }
  if (auto spawned = run_as_local_ranks_unless_launched(a.ranks, "kiln bench ddp")) return *spawned;
  torch::set_num_threads(1);
  keep_freed_heap_memory();  // as kiln train does (Note [Keep freed tensor memory])
  KILN_ASSIGN_OR_RETURN(auto pg, comm::ProcessGroup::from_env());
  comm::Communicator& c = pg->comm();
  torch::manual_seed(c.rank());
  auto x = torch::randn({a.batch, a.io});
  auto y = torch::randn({a.batch, a.io});

  // (a) backward, then one allreduce of every gradient.
  BenchNet bench_a = make_net(a);
  torch::nn::Module* net_a = bench_a.module.get();
  std::int64_t params = 0;
  for (auto& p : net_a->parameters()) params += p.numel();
  auto flat = torch::zeros({params});
  double a_backward_cpu_s = 0, a_comm_cpu_s = 0, a_backward_faults = 0;  // of the last step (a)
  double a_forward_s = 0, a_forward_faults = 0;
  std::array<Clock::time_point, 3> a_phases{};  // forward, backward, comm starts
  auto run_step_a = [&](double* backward_s, double* comm_s) -> Status {
    CpuMark before_forward;
    auto t_fwd = Clock::now();
    net_a->zero_grad();
    auto loss = torch::mse_loss(bench_a.forward(x), y);
    a_forward_s = since(t_fwd);
    a_forward_faults = static_cast<double>(CpuMark{}.faults() - before_forward.faults());
    auto t_bwd = Clock::now();
    CpuMark before_backward;
    loss.backward();
    *backward_s = since(t_bwd);
    a_phases = {t_fwd, t_bwd, Clock::now()};
    CpuMark after_backward;
    a_backward_cpu_s = after_backward.thread - before_backward.thread;
    a_backward_faults = static_cast<double>(after_backward.faults() - before_backward.faults());
    CpuMark before_comm;
    auto t_comm = Clock::now();
    torch::NoGradGuard g;
    std::int64_t off = 0;
    for (auto& p : net_a->parameters()) {
      flat.narrow(0, off, p.numel()).copy_(p.grad().view(-1));
      off += p.numel();
    }
    KILN_RETURN_IF_ERROR(c.allreduce(flat.data_ptr<float>(), static_cast<std::size_t>(params),
                                     comm::DataType::kFloat32, comm::ReduceOp::kAvg)
                             ->wait());
    off = 0;
    for (auto& p : net_a->parameters()) {
      p.mutable_grad().view(-1).copy_(flat.narrow(0, off, p.numel()));
      off += p.numel();
    }
    *comm_s = since(t_comm);
    a_comm_cpu_s = cpu_seconds(CLOCK_PROCESS_CPUTIME_ID) - before_comm.process;
    return Status::ok();
  };

  // (b) kiln::ddp.
  BenchNet bench_b = make_net(a);
  torch::nn::Module* net_b = bench_b.module.get();
  ddp::DdpOptions options;
  options.bucket_cap_bytes = static_cast<std::size_t>(a.bucket_mib * (1 << 20));
  options.auto_bucket_cap = a.auto_cap;
  options.compress_bf16 = a.bf16;
  KILN_ASSIGN_OR_RETURN(auto d, ddp::DistributedDataParallel::create(bench_b.module, c, options));
  double b_backward_faults = 0;  // of the last step (b), its backward and sync
  // Step (b)'s forward (zero_grad, forward, loss): wall and this thread's
  // CPU, faults and preemptions, to see what slows a forward that follows a
  // step's communication against the compute floor's.
  double b_forward_s = 0, b_forward_cpu_s = 0, b_forward_faults = 0, b_forward_preempted = 0;
  double b_sync_s = 0;  // DistributedDataParallel::backward, call to return
  std::array<Clock::time_point, 3> b_phases{};  // forward, DDP backward starts, its return
  auto run_step_b = [&]() -> Status {
    CpuMark before_forward;
    auto t_fwd = Clock::now();
    net_b->zero_grad();
    auto loss = torch::mse_loss(bench_b.forward(x), y);
    b_forward_s = since(t_fwd);
    CpuMark before;
    b_forward_cpu_s = before.thread - before_forward.thread;
    b_forward_faults = static_cast<double>(before.faults() - before_forward.faults());
    b_forward_preempted = static_cast<double>(before.preempted() - before_forward.preempted());
    auto t_sync = Clock::now();
    Status s = d->backward(loss);
    b_sync_s = since(t_sync);
    b_phases = {t_fwd, t_sync, Clock::now()};
    b_backward_faults = static_cast<double>(CpuMark{}.faults() - before.faults());
    return s;
  };

  // The modes alternate step by step, so a machine whose speed drifts (a
  // shared one does, over seconds) slows both alike, and each step of (b) is
  // compared with the step of (a) right before it. bucket_cap = auto spends
  // its first steps of (b) observing and trying caps; (a) runs beside them
  // untimed.
  std::vector<double> a_backward, a_comm, a_step, a_compute, b_backward, b_exposed, b_step, ratios;
  std::vector<double> a_backward_cpu, a_comm_cpu, b_backward_cpu, b_backward_other_cpu,
      b_step_other_cpu, b_preempted, a_faults, b_faults, b_fwd, b_fwd_cpu, b_fwd_faults,
      b_fwd_preempted, a_fwd, a_fwd_faults, b_rest, b_sync_rest;
  // Per other thread name (the communicator's "kiln-engine", "kiln-tcp"),
  // per step (b): CPU seconds, sleeps (each a wake-up later), preemptions.
  std::map<std::string, std::array<std::vector<double>, 3>> b_threads;
  const int untimed = options.auto_tuning_steps() + a.warmup;
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> phase_log(nullptr, &std::fclose);
  if (!a.phase_log.empty()) {
    const std::string path = fmt::format("{}.rank{}", a.phase_log, c.rank());
    phase_log.reset(std::fopen(path.c_str(), "w"));
    if (!phase_log) return invalid_argument(fmt::format("bench ddp: --phase-log: cannot open {}", path));
  }
  for (int s = 0; s < untimed + a.steps; ++s) {
    double bwd = 0, comm_s = 0;
    auto t0 = Clock::now();
    KILN_RETURN_IF_ERROR(run_step_a(&bwd, &comm_s));
    double a_s = since(t0);
    const auto threads_before_b = ResourceUsage::of_other_threads_by_name();
    auto t1 = Clock::now();
    CpuMark before_b;
    KILN_RETURN_IF_ERROR(run_step_b());
    double b_s = since(t1);
    CpuMark after_b;
    if (s < untimed) continue;
    for (const auto& [name, after] : ResourceUsage::of_other_threads_by_name()) {
      auto before = threads_before_b.find(name);
      if (before == threads_before_b.end()) continue;
      const ResourceUsage d = after - before->second;
      auto& per_step = b_threads[name];
      per_step[0].push_back(d.cpu_s);
      per_step[1].push_back(static_cast<double>(d.voluntary_switches));
      per_step[2].push_back(static_cast<double>(d.involuntary_switches));
    }
    if (phase_log) {
      const double b_bwd_end = monotonic_s(b_phases[1]) + d->last_sync().backward_s;
      std::fprintf(phase_log.get(),
                   "a_forward %.6f %.6f\na_backward %.6f %.6f\na_comm %.6f %.6f\n"
                   "b_forward %.6f %.6f\nb_backward %.6f %.6f\nb_wait %.6f %.6f\n",
                   monotonic_s(a_phases[0]), monotonic_s(a_phases[1]), monotonic_s(a_phases[1]),
                   monotonic_s(a_phases[2]), monotonic_s(a_phases[2]), monotonic_s(t1),
                   monotonic_s(b_phases[0]), monotonic_s(b_phases[1]), monotonic_s(b_phases[1]),
                   b_bwd_end, b_bwd_end, monotonic_s(b_phases[2]));
    }
    a_backward_cpu.push_back(a_backward_cpu_s);
    a_comm_cpu.push_back(a_comm_cpu_s);
    b_backward_cpu.push_back(d->last_sync().backward_thread_cpu_s);
    b_backward_other_cpu.push_back(d->last_sync().backward_other_cpu_s);
    b_step_other_cpu.push_back((after_b.process - before_b.process) -
                               (after_b.thread - before_b.thread));
    b_preempted.push_back(static_cast<double>(after_b.preempted() - before_b.preempted()));
    a_faults.push_back(a_backward_faults);
    b_faults.push_back(b_backward_faults);
    a_fwd.push_back(a_forward_s);
    // What the step spent outside forward, DDP's backward call and the
    // bench's marks: the rest of the step, per step.
    b_rest.push_back(b_s - b_forward_s - b_sync_s);
    b_sync_rest.push_back(b_sync_s - d->last_sync().backward_s - d->last_sync().exposed_comm_s);
    a_fwd_faults.push_back(a_forward_faults);
    b_fwd.push_back(b_forward_s);
    b_fwd_cpu.push_back(b_forward_cpu_s);
    b_fwd_faults.push_back(b_forward_faults);
    b_fwd_preempted.push_back(b_forward_preempted);
    a_backward.push_back(bwd);
    a_comm.push_back(comm_s);
    a_step.push_back(a_s);
    a_compute.push_back(a_s - comm_s);
    b_backward.push_back(d->last_sync().backward_s);
    b_exposed.push_back(d->last_sync().exposed_comm_s);
    b_step.push_back(b_s);
    ratios.push_back(b_s / a_s);
  }

  if (a.check) KILN_RETURN_IF_ERROR(check_gradients(a, c, *net_a, *net_b, run_step_a, run_step_b));

  double backward = median(a_backward), comm_s = median(a_comm), exposed = median(b_exposed);
  double step_a = median(a_step), step_b = median(b_step);
  // The slowest rank's step is the step: DDP's ranks wait for each other.
  double slowest[2] = {step_b, median(a_compute)};
  KILN_RETURN_IF_ERROR(c.allreduce(slowest, 2, comm::DataType::kFloat64, comm::ReduceOp::kMax)->wait());
  nlohmann::json doc{{"world_size", c.size()},
                     {"parameters", params},
                     {"batch_per_rank", a.batch},
                     {"buckets", d->bucket_count()},
                     {"bucket_cap_mib", static_cast<double>(d->bucket_cap_bytes()) / (1 << 20)},
                     {"bucket_cap_auto", a.auto_cap},
                     {"compress_bf16", a.bf16},
                     {"linear", a.overlapped_linear ? "overlapped" : "plain"},
                     {"first_layer_slices", a.overlapped_linear ? a.first_layer_slices : 1},
                     {"second_layer_slices", a.overlapped_linear ? a.second_layer_slices : 1},
                     {"backward_s", backward},
                     {"comm_s", comm_s},
                     {"ddp_backward_s", median(b_backward)},
                     {"exposed_comm_s", exposed},
                     {"overlap", std::clamp(1.0 - exposed / comm_s, 0.0, 1.0)},
                     {"step_a_s", step_a},
                     {"step_b_s", step_b},
                     {"step_ratio", median(ratios)},
                     // (b)'s step and (a)'s step without its communication
                     // (the compute floor), each the slowest rank's median.
                     {"step_b_slowest_s", slowest[0]},
                     {"compute_s", slowest[1]},
                     {"check", a.check ? "ok" : "off"},
                     // How this rank's allreduces ran, over the whole run:
                     // on shared buckets (Note [Buckets in shared memory])
                     // or through the kernel (the plain flat buffer of (a)).
                     {"direct_allreduces", c.direct_allreduces()},
                     {"cma_allreduces", c.cma_allreduces()},
                     // CPU seconds (this rank's medians): the training thread
                     // in plain backward and in DDP's; the other threads (the
                     // communicator's) during DDP's backward and its whole
                     // step; all of (a)'s allreduce. Then the times the
                     // training thread was preempted in a DDP step, and its
                     // page faults in each backward.
                     {"backward_cpu_s", median(a_backward_cpu)},
                     {"ddp_backward_cpu_s", median(b_backward_cpu)},
                     {"ddp_backward_comm_cpu_s", median(b_backward_other_cpu)},
                     {"ddp_step_comm_cpu_s", median(b_step_other_cpu)},
                     {"comm_cpu_s", median(a_comm_cpu)},
                     {"ddp_step_preempted", median(b_preempted)},
                     {"backward_page_faults", median(a_faults)},
                     {"ddp_backward_page_faults", median(b_faults)},
                     {"forward_s", median(a_fwd)},
                     {"forward_page_faults", median(a_fwd_faults)},
                     {"ddp_forward_s", median(b_fwd)},
                     {"ddp_forward_cpu_s", median(b_fwd_cpu)},
                     {"ddp_forward_page_faults", median(b_fwd_faults)},
                     {"ddp_forward_preempted", median(b_fwd_preempted)},
                     {"ddp_step_rest_s", median(b_rest)},
                     {"ddp_call_rest_s", median(b_sync_rest)}};
  // Where the training thread's preemptions come from: each of the other
  // threads' medians over DDP steps (wake-ups = its sleeps).
  for (const auto& [name, per_step] : b_threads) {
    doc["ddp_step_threads"][name] = {{"cpu_s", median(per_step[0])},
                                     {"wakeups", median(per_step[1])},
                                     {"preempted", median(per_step[2])}};
  }
  // The last step's buckets: [bytes, issued, began, ended] (s into backward).
  for (const auto& cs : d->last_sync().collectives) {
    doc["last_buckets"].push_back({cs.bytes, cs.launched_s, cs.started_s, cs.finished_s});
  }
  if (c.rank() == 0) {
    if (a.json) {
      std::printf("%s\n", doc.dump().c_str());
    } else {
      std::printf("%s\n", doc.dump(2).c_str());
    }
  }
  return Status::ok();
}

const CommandRegistration kRegister("bench", [](CLI::App& parent) {
  auto a = std::make_shared<DdpBenchArgs>();
  auto* cmd = parent.add_subcommand(
      "ddp", "Overlap of DDP's gradient allreduce with backward (starts --ranks local ranks unless launched)");
  cmd->add_option("--width", a->width, "hidden width of the MLP");
  cmd->add_option("--layers", a->layers, "hidden width x width layers");
  cmd->add_option("--io", a->io, "input and output width of the MLP")->capture_default_str();
  cmd->add_option("--batch", a->batch, "samples per rank per step");
  cmd->add_option("--steps", a->steps, "timed steps per mode");
  cmd->add_option("--warmup", a->warmup, "untimed steps per mode");
  cmd->add_option("--bucket-mib", a->bucket_mib, "DDP bucket cap, MiB");
  cmd->add_flag("--auto-bucket-cap", a->auto_cap,
                "bucket_cap = auto: try candidate caps, keep the best");
  cmd->add_flag("--bf16", a->bf16, "communicate gradients as bfloat16");
  cmd->add_flag("--json", a->json, "one-line JSON on rank 0");
  cmd->add_flag("--check", a->check, "compare DDP's gradients with backward + allreduce");
  cmd->add_flag("--overlapped-linear", a->overlapped_linear,
                "train the MLP of kiln::ddp::OverlappedLinear layers (weight gradients first)");
  cmd->add_option("--first-layer-slices", a->first_layer_slices,
                  "with --overlapped-linear: row blocks of the first layer's weight")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--second-layer-slices", a->second_layer_slices,
                  "with --overlapped-linear: row blocks of the second layer's weight")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--ranks", a->ranks, "local ranks to start when not run under a launcher")
      ->capture_default_str();
  cmd->add_flag("--inject-corruption", a->inject_corruption)->group("");  // tests only
  cmd->add_option("--phase-log", a->phase_log)->group("");  // profiling (DdpBenchArgs::phase_log)
  cmd->callback(run_status([a] { return bench_ddp(*a); }));
});

}  // namespace
}  // namespace kiln::cli
