// `kiln bench pipeline`: the pipeline bubble of Kiln's schedules, measured
// against the closed form (Narayanan et al. 2021): (p - 1) / m for 1F1B and
// (p - 1) / (v m) for the interleaved schedule, for p in {2, 4} stages and
// m in {1, 2, 4, 8} micro-batches.
//
// Note [Simulated stage compute]: each stage's forward and backward is a
// timed wait of --forward-ms / --backward-ms (divided by v for a chunk), not
// arithmetic: 4 stage processes on a 2-core host would otherwise measure how
// the cores are shared, not the schedule. Everything else is the real path:
// PipelineEngine over a DeviceMesh's channels, activations of
// --activation-kib sent and received, gradients back.
//
// Note [Bubble against the compute that ran]: the measured bubble is
// (step - compute) / compute, where compute is the busiest rank's time inside
// its forward and backward callbacks in that step: the step a pipeline
// without waits would take. A timed wait overshoots its nominal length by
// 0.05-0.3 ms on a shared VM (timer slack, wake-up), about 5% of a 10 ms
// chunk forward; against the nominal m (t_f + t_b) that overshoot would count
// as bubble, and the bubble would depend on the host's timers rather than on
// the schedule. Everything the engine does between callbacks (receives,
// sends, the boundary surrogate) stays in the bubble. The nominal figure is
// reported beside it (`bubble_vs_nominal`). Medians of --steps steps.
#include <algorithm>
#include <chrono>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "cli/command.h"
#include "cli/local_ranks.h"
#include "cli/torch/bench_mlp.h"
#include "kiln/comm/process_group.h"
#include "kiln/parallel/mesh/device_mesh.h"
#include "kiln/parallel/pipeline/engine.h"

namespace kiln::cli {
namespace {

namespace pp = parallel::pipeline;
using bench::median;
using bench::since;

struct PipelineBenchArgs {
  double forward_ms = 20;
  double backward_ms = 40;
  int activation_kib = 256;
  int steps = 3;
  bool json = false;
  bool check = false;
};

struct Case {
  pp::ScheduleSpec spec;
  double measured = 0, formula = 0, step_s = 0, ideal_s = 0;
  double compute_s = 0, vs_nominal = 0;
};

void wait_for(double ms) { std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(ms)); }

// One case on the first spec.stages ranks of `world` (the others idle).
Result<Case> run_case(comm::Communicator& world, const pp::ScheduleSpec& spec, const PipelineBenchArgs& a) {
  Case out{spec};
  const bool member = world.rank() < spec.stages;
  KILN_ASSIGN_OR_RETURN(auto group, world.split(member ? 0 : -1, world.rank()));
  if (member) {
    KILN_ASSIGN_OR_RETURN(auto mesh, parallel::DeviceMesh::create(
                                         *group, {.tp = 1, .pp = spec.stages,
                                                  .wrap_channels = spec.kind == pp::ScheduleKind::kInterleaved}));
    pp::PipelineEngine engine(*mesh, spec, std::chrono::minutes(2));
    const std::int64_t elements = std::int64_t{a.activation_kib} * 256;
    pp::StageCallbacks cb;
    cb.forward = [&](int, int, const torch::Tensor& input) {
      wait_for(a.forward_ms / spec.chunks);
      // A value that depends on the input, so the backward reaches it.
      torch::Tensor base = input.defined() ? input : torch::zeros({elements}, torch::requires_grad());
      return base * 1.0;
    };
    cb.backward = [&](int, int, const torch::Tensor& scalar, bool) -> Status {
      wait_for(a.backward_ms / spec.chunks);
      scalar.backward();
      return Status::ok();
    };
    cb.input_shape = [&](int) { return std::vector<std::int64_t>{elements}; };
    // The last global stage's output must be a scalar loss.
    auto forward = cb.forward;
    const int last = spec.global_stages() - 1;
    const int stage = mesh->coord().pp;
    cb.forward = [&, forward](int chunk, int mb, const torch::Tensor& input) {
      torch::Tensor out = forward(chunk, mb, input);
      return pp::global_stage(spec, chunk, stage) == last ? out.sum() : out;
    };
    std::vector<double> bubbles, steps, computes;
    for (int s = 0; s < a.steps + 1; ++s) {
      KILN_RETURN_IF_ERROR(group->barrier()->wait(std::chrono::minutes(2)));
      auto t0 = std::chrono::steady_clock::now();
      KILN_ASSIGN_OR_RETURN(pp::PipelineStepStats stats, engine.train_step(cb));
      // The step ends when the last rank is done; the busiest rank's compute
      // is the bubble-free step (Note [Bubble against the compute that ran]).
      double mine[2] = {since(t0), stats.forward_s + stats.backward_s}, slowest[2] = {0, 0};
      KILN_RETURN_IF_ERROR(group->allreduce(mine, slowest, 2, comm::DataType::kFloat64, comm::ReduceOp::kMax)
                               ->wait(std::chrono::minutes(2)));
      if (s == 0) continue;  // the first step warms the channels
      steps.push_back(slowest[0]);
      computes.push_back(slowest[1]);
      bubbles.push_back((slowest[0] - slowest[1]) / slowest[1]);
    }
    out.step_s = median(steps);
    out.compute_s = median(computes);
    out.measured = median(bubbles);
  }
  double shared[3] = {out.step_s, out.compute_s, out.measured};
  KILN_RETURN_IF_ERROR(world.broadcast(shared, 3, comm::DataType::kFloat64, 0)->wait(std::chrono::minutes(2)));
  out.step_s = shared[0];
  out.compute_s = shared[1];
  out.measured = shared[2];
  out.ideal_s = spec.microbatches * (a.forward_ms + a.backward_ms) / 1e3;
  out.vs_nominal = (out.step_s - out.ideal_s) / out.ideal_s;
  out.formula = pp::bubble_formula(spec);
  return out;
}

Status bench_pipeline(const PipelineBenchArgs& a) {
  if (auto spawned = run_as_local_ranks_unless_launched(4, "kiln bench pipeline")) return *spawned;
  torch::set_num_threads(1);
  KILN_ASSIGN_OR_RETURN(auto pg, comm::ProcessGroup::from_env());
  comm::Communicator& world = pg->comm();
  if (world.size() < 4) return invalid_argument("kiln bench pipeline needs 4 ranks (it starts them when typed alone)");
  std::vector<pp::ScheduleSpec> specs;
  for (int p : {2, 4}) {
    for (int m : {1, 2, 4, 8}) {
      specs.push_back({pp::ScheduleKind::k1F1B, p, m, 1});
      if (m % p == 0) specs.push_back({pp::ScheduleKind::kInterleaved, p, m, 2});
    }
  }
  nlohmann::json cases = nlohmann::json::array();
  bool within = true;
  for (const auto& spec : specs) {
    KILN_ASSIGN_OR_RETURN(Case c, run_case(world, spec, a));
    const bool checked = spec.microbatches >= spec.stages;
    if (checked && std::abs(c.measured - c.formula) > 0.05) within = false;
    cases.push_back({{"schedule", pp::schedule_name(spec.kind)}, {"p", spec.stages}, {"m", spec.microbatches},
                     {"v", spec.chunks}, {"bubble_measured", c.measured}, {"bubble_formula", c.formula},
                     {"step_s", c.step_s}, {"compute_s", c.compute_s}, {"ideal_s", c.ideal_s},
                     {"bubble_vs_nominal", c.vs_nominal}, {"within_0_05", std::abs(c.measured - c.formula) <= 0.05}});
    if (world.rank() == 0 && !a.json) {
      fmt::print("{:<12} p {} m {} v {}: bubble {:.3f} (formula {:.3f}), step {:.1f} ms, compute {:.1f} ms "
                 "(nominal {:.1f} ms: {:.3f})\n",
                 pp::schedule_name(spec.kind), spec.stages, spec.microbatches, spec.chunks, c.measured, c.formula,
                 1e3 * c.step_s, 1e3 * c.compute_s, 1e3 * c.ideal_s, c.vs_nominal);
    }
  }
  if (world.rank() == 0 && a.json) {
    nlohmann::json j = {{"bench", "pipeline"}, {"forward_ms", a.forward_ms}, {"backward_ms", a.backward_ms},
                        {"activation_kib", a.activation_kib}, {"steps", a.steps}, {"cases", cases}};
    fmt::print("{}\n", j.dump());
  }
  if (a.check && !within) {
    return failed_precondition("a measured bubble is more than 0.05 from the formula for m >= p");
  }
  return Status::ok();
}

const CommandRegistration kRegister("bench", [](CLI::App& parent) {
  auto a = std::make_shared<PipelineBenchArgs>();
  auto* cmd = parent.add_subcommand(
      "pipeline", "Pipeline bubble of the 1F1B and interleaved schedules against (p - 1) / (v m) (4 local ranks)");
  cmd->add_option("--forward-ms", a->forward_ms, "simulated forward time of a stage per micro-batch");
  cmd->add_option("--backward-ms", a->backward_ms, "simulated backward time of a stage per micro-batch");
  cmd->add_option("--activation-kib", a->activation_kib, "activation sent between stages per micro-batch");
  cmd->add_option("--steps", a->steps, "timed steps per case (median)");
  cmd->add_flag("--json", a->json, "one-line JSON on rank 0");
  cmd->add_flag("--check", a->check, "fail if a case with m >= p is more than 0.05 from the formula");
  cmd->callback(run_status([a] { return bench_pipeline(*a); }));
});

}  // namespace
}  // namespace kiln::cli
