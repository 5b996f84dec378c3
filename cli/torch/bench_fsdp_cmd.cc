// `kiln bench fsdp`: sharded data parallel (kiln::parallel::zero) in one run,
// one process per rank (under kiln launch, or one per network namespace:
// bench/fsdp_overlap.sh). Two wrappers train the same MLP on the same data,
// step by step in turn:
//   (a) the baseline: gather every unit, forward, backward, then reduce every
//       unit (nothing overlaps: ZeroOptions::overlap = false);
//   (b) the overlapped wrapper: the next unit's gather prefetched while one
//       computes, each unit's reduction started as its gradients are ready.
// Reports comm (a's time in collectives), exposed comm (b's), overlap =
// 1 - exposed / comm, the median per-step ratio b / a, the collective volume
// against DDP's allreduce of the same gradients, and per-rank state memory:
// the wrapper's accounting against the ZeRO formula, and the CPU allocator's
// peak over the timed steps (activations included).
// Typed on its own it starts --ranks local ranks (default 2); under a
// launcher each process is one rank.
// --check: (a) and (b) trained the same model on the same data, and the
// schedule moves collectives in time, never what they compute: after the
// timed steps both hold the same parameters, to the bit.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/local_ranks.h"
#include "cli/torch/bench_mlp.h"
#include "kiln/comm/process_group.h"
#include "kiln/parallel/counting_allocator.h"
#include "kiln/parallel/zero/sharded_data_parallel.h"

namespace kiln::cli {
namespace {

using parallel::zero::ShardedDataParallel;
using parallel::zero::ZeroOptions;

struct FsdpBenchArgs {
  int stage = 3;
  int width = 2048;
  int layers = 4;  // hidden width x width layers, each its own unit
  int batch = 256;
  int steps = 6;
  int warmup = 2;
  bool bf16 = false;
  int prefetch = 1;
  std::int64_t min_unit_params = 0;  // wrap policy by size: merge smaller neighbouring layers
  std::string trace;  // PATH: (b)'s timeline of the timed steps, PATH.rank<r>.jsonl
  bool json = false;
  bool check = false;
  // Tests only: adds 1 to one of (b)'s parameters on the last rank before
  // --check compares, so a test can prove the check catches it.
  bool inject_corruption = false;
  int ranks = 2;  // when not under a launcher
};

using bench::median;
using bench::MlpImpl;
using bench::since;

// --check: every parameter of (a) equals (b)'s on every rank.
Status check_same_parameters(const FsdpBenchArgs& a, comm::Communicator& c, MlpImpl& net_a,
                             ShardedDataParallel& z_a, MlpImpl& net_b, ShardedDataParallel& z_b) {
  KILN_RETURN_IF_ERROR(z_a.gather_all());
  KILN_RETURN_IF_ERROR(z_b.gather_all());
  torch::NoGradGuard no_grad;
  if (a.inject_corruption && c.rank() == c.size() - 1) {
    net_b.layers.back()->bias.view(-1)[0].add_(1.0f);
  }
  auto pa = net_a.parameters(), pb = net_b.parameters();
  double worst = 0;
  for (std::size_t i = 0; i < pa.size(); ++i) {
    if (!torch::equal(pa[i], pb[i])) {
      auto diff = (pa[i].to(torch::kFloat32) - pb[i].to(torch::kFloat32)).abs().max();
      worst = std::max(worst, diff.item<double>());
    }
  }
  std::int32_t bad = worst > 0 ? 1 : 0;
  if (bad) {
    std::fprintf(stderr,
                 "bench fsdp: rank %d: the overlapped wrapper's parameters differ from the "
                 "baseline's by %g (they must be equal)\n",
                 c.rank(), worst);
  }
  KILN_RETURN_IF_ERROR(c.allreduce(&bad, 1, comm::DataType::kInt32, comm::ReduceOp::kMax)->wait());
  if (bad) {
    return internal_error("bench fsdp: --check failed: the two schedules trained different parameters");
  }
  return Status::ok();
}

Status bench_fsdp(const FsdpBenchArgs& a) {
  if (a.steps < 1 || a.warmup < 0) {
    return invalid_argument(fmt::format(
        "bench fsdp: --steps {} --warmup {}: need --steps >= 1 and --warmup >= 0", a.steps, a.warmup));
  }
  if (auto spawned = run_as_local_ranks_unless_launched(a.ranks, "kiln bench fsdp")) return *spawned;
  parallel::CountingAllocator& memory = parallel::CountingAllocator::install();
  torch::set_num_threads(1);
  KILN_ASSIGN_OR_RETURN(auto pg, comm::ProcessGroup::from_env());
  comm::Communicator& c = pg->comm();
  torch::manual_seed(c.rank());
  auto x = torch::randn({a.batch, 1024});
  auto y = torch::randn({a.batch, 1024});

  ZeroOptions options;
  options.stage = a.stage;
  options.prefetch = a.prefetch;
  options.min_unit_params = a.min_unit_params;
  options.precision = a.bf16 ? parallel::zero::Precision::kBf16 : parallel::zero::Precision::kFp32;
  options.optimizer.lr = 1e-4;
  auto make = [&](bool overlap) -> Result<std::pair<std::shared_ptr<MlpImpl>, std::unique_ptr<ShardedDataParallel>>> {
    torch::manual_seed(1);
    auto net = std::make_shared<MlpImpl>(a.width, a.layers);
    ZeroOptions o = options;
    o.overlap = overlap;
    o.trace = overlap && !a.trace.empty();
    KILN_ASSIGN_OR_RETURN(auto z, ShardedDataParallel::create(net, c, o));
    return std::make_pair(net, std::move(z));
  };
  KILN_ASSIGN_OR_RETURN(auto base, make(false));
  KILN_ASSIGN_OR_RETURN(auto over, make(true));
  // One timed step: the optimizer step on the previous step's gradients
  // (none the first time), forward, backward; its collective statistics.
  // Each wrapper's optimizer step runs right before its own forward, as in a
  // training loop: the gathers a step starts (stage 3's prefetch, stages 1
  // and 2's new parameters) overlap that wrapper's work only, never the
  // other wrapper's timed step (which would slow one and hide the other's).
  auto run_step = [&](int s, MlpImpl& net, ShardedDataParallel& z,
                      parallel::zero::ZeroSyncStats* sync) -> Status {
    if (s > 0) KILN_RETURN_IF_ERROR(z.step(options.optimizer.lr));
    auto loss = torch::mse_loss(net.forward(x), y);
    KILN_RETURN_IF_ERROR(z.backward(loss));
    *sync = z.last_sync();
    return Status::ok();
  };
  auto comm_time = [](const parallel::zero::ZeroSyncStats& s) { return s.gather_wait_s + s.exposed_comm_s; };

  // Alternating step by step: a machine whose speed drifts slows both alike.
  std::vector<double> a_step, a_comm, b_step, b_exposed, b_backward, ratios;
  // Where (b)'s exposed time goes: gathers waited for in forward, in
  // backward, reductions waited for inside backward (more than
  // reductions_in_flight running), and those still running when it ends.
  std::vector<double> b_forward_wait, b_backward_wait, b_backward_reduce, b_tail;
  std::size_t bytes_per_step = 0;
  for (int s = 0; s < a.warmup + a.steps; ++s) {
    parallel::zero::ZeroSyncStats sync_a, sync_b;
    auto t0 = Clock::now();
    KILN_RETURN_IF_ERROR(run_step(s, *base.first, *base.second, &sync_a));
    const double a_s = since(t0);
    if (s == a.warmup) {
      memory.reset_peak();
      over.second->reset_peak();
      (void)over.second->take_trace();
    }
    auto t1 = Clock::now();
    KILN_RETURN_IF_ERROR(run_step(s, *over.first, *over.second, &sync_b));
    const double b_s = since(t1);
    if (s < a.warmup) continue;
    bytes_per_step = sync_b.bytes;
    a_step.push_back(a_s);
    a_comm.push_back(comm_time(sync_a));
    b_step.push_back(b_s);
    b_exposed.push_back(comm_time(sync_b));
    b_backward.push_back(sync_b.backward_s);
    b_forward_wait.push_back(sync_b.gather_wait_s - sync_b.backward_gather_wait_s);
    b_backward_wait.push_back(sync_b.backward_gather_wait_s);
    b_backward_reduce.push_back(sync_b.backward_reduce_wait_s);
    b_tail.push_back(sync_b.exposed_comm_s - sync_b.backward_reduce_wait_s);
    ratios.push_back(b_s / a_s);
  }
  // The last_sync() bytes of a step are counted from one step() to the next:
  // this step's gathers (forward, backward) and reductions. DDP's allreduce
  // moves twice its buffer (reduce-scatter + allgather), the convention of
  // bus bandwidth.
  const ShardedDataParallel& z = *over.second;
  const double ddp_bytes = 2.0 * 4.0 * static_cast<double>(z.parameter_count()) *
                           (a.bf16 ? 0.5 : 1.0);
  const double comm_s = median(a_comm), exposed = median(b_exposed);
  nlohmann::json doc{{"world_size", c.size()},
                     {"stage", a.stage},
                     {"precision", a.bf16 ? "bf16" : "fp32"},
                     {"parameters", z.parameter_count()},
                     {"units", z.unit_count()},
                     {"batch_per_rank", a.batch},
                     {"prefetch", a.prefetch},
                     {"min_unit_params", a.min_unit_params},
                     {"comm_s", comm_s},
                     {"exposed_comm_s", exposed},
                     {"backward_s", median(b_backward)},
                     {"exposed_forward_gather_s", median(b_forward_wait)},
                     {"exposed_backward_gather_s", median(b_backward_wait)},
                     {"exposed_backward_reduce_s", median(b_backward_reduce)},
                     {"exposed_after_backward_s", median(b_tail)},
                     {"overlap", std::clamp(1.0 - exposed / comm_s, 0.0, 1.0)},
                     {"step_baseline_s", median(a_step)},
                     {"step_s", median(b_step)},
                     {"step_ratio", median(ratios)},
                     {"comm_bytes_per_step", bytes_per_step},
                     {"comm_bytes_ratio_vs_ddp", static_cast<double>(bytes_per_step) / ddp_bytes},
                     {"peak_state_bytes_per_rank", z.peak_state_bytes().total()},
                     {"persistent_state_bytes_per_rank", z.state_bytes().persistent()},
                     {"formula_state_bytes_per_rank", z.formula_state_bytes()},
                     {"in_flight_bound_bytes", z.in_flight_bound()},
                     {"allocator_peak_bytes_per_rank", memory.peak_bytes()},
                     {"replicated_state_bytes_per_rank", 16 * z.parameter_count()},
                     {"check", a.check ? "ok" : "off"}};
  if (!a.trace.empty()) {
    const std::string path = fmt::format("{}.rank{}.jsonl", a.trace, c.rank());
    std::FILE* f = std::fopen(path.c_str(), "w");
    if (f == nullptr) return unavailable(fmt::format("bench fsdp: cannot write {}", path));
    for (const auto& e : over.second->take_trace()) {
      const nlohmann::json line{{"what", e.what}, {"unit", e.unit}, {"issued", e.issued},
                                {"started", e.started}, {"ended", e.ended}};
      std::fprintf(f, "%s\n", line.dump().c_str());
    }
    std::fclose(f);
  }
  // Last: gathering every unit for the comparison would count in the peak
  // and the trace.
  if (a.check) {
    KILN_RETURN_IF_ERROR(check_same_parameters(a, c, *base.first, *base.second, *over.first, *over.second));
  }
  if (c.rank() == 0) std::printf("%s\n", a.json ? doc.dump().c_str() : doc.dump(2).c_str());
  return Status::ok();
}

const CommandRegistration kRegister("bench", [](CLI::App& parent) {
  auto a = std::make_shared<FsdpBenchArgs>();
  auto* cmd = parent.add_subcommand(
      "fsdp", "Sharded data parallel: overlap, collective volume and state memory (starts --ranks local "
              "ranks unless launched)");
  cmd->add_option("--stage", a->stage, "ZeRO stage: 1, 2 or 3")->check(CLI::Range(1, 3));
  cmd->add_option("--width", a->width, "hidden width of the MLP");
  cmd->add_option("--layers", a->layers, "hidden width x width layers (one unit each)");
  cmd->add_option("--batch", a->batch, "samples per rank per step");
  cmd->add_option("--steps", a->steps, "timed steps per mode");
  cmd->add_option("--warmup", a->warmup, "untimed steps per mode");
  cmd->add_flag("--bf16", a->bf16, "bf16 compute and communication, fp32 masters");
  cmd->add_option("--prefetch", a->prefetch, "stage 3: units gathered ahead of the one computing")
      ->check(CLI::Range(1, 8));
  cmd->add_option("--min-unit-params", a->min_unit_params,
                  "merge neighbouring layers into units of at least this many parameters "
                  "(0: a unit per layer)");
  cmd->add_option("--trace", a->trace,
                  "write the overlapped wrapper's timeline of the timed steps to PATH.rank<r>.jsonl");
  cmd->add_flag("--json", a->json, "one-line JSON on rank 0");
  cmd->add_flag("--check", a->check,
                "after the timed steps, compare the two wrappers' parameters (equal to the bit)");
  cmd->add_option("--ranks", a->ranks, "local ranks to start when not run under a launcher")
      ->capture_default_str();
  cmd->add_flag("--inject-corruption", a->inject_corruption)->group("");  // tests only
  cmd->callback(run_status([a] { return bench_fsdp(*a); }));
});

}  // namespace
}  // namespace kiln::cli
