// `kiln bench handoff`: what ranks lose when they outnumber the cores
// (docs/plan.md "CPU hosts"; Note [Core sharing] in kiln/plan/host_profile.h).
//
//   kiln bench handoff --ranks 8 --group 2 --units 10 --rounds 40 [--json]
//
// Each rank runs rounds of: --units of CPU work (kiln/plan/probe/sharing_probe.h:
// a linear layer forward and backward, one intra-op thread as kiln train
// gives a rank when ranks >= cores), then a blocking allreduce of --bytes
// within its group of --group consecutive ranks (a tensor-parallel pair, or
// a pipeline hand-off). Reported: the time per round, the median over
// --repeats timings of --rounds rounds, each the slowest rank's. `kiln plan
// calibrate` runs it at 1, 2 and 4 ranks per core and two work sizes and
// fits round = slowdown · max(1, ranks/cores) · work + handoff.
//
//   kiln bench handoff --ranks 8 --group 2 --pp 4 --microbatches 4 --messages 4 --units 3 [--json]
//
// With --pp > 1 the ranks form a pipeline instead (Note [Pipeline hand-off]
// in kiln/plan/host_profile.h): --pp stages of --group tensor-parallel ranks
// run kiln's own 1F1B engine (kiln/parallel/pipeline/engine.h) over
// --microbatches, each forward --messages times --units of work then a
// group all-reduce, each backward the same with twice the work, activations
// and gradients of --bytes between stages. Reported: the step time, the
// median over --repeats steps, each the slowest rank's.
//
//   kiln bench handoff --ranks 4 --group 2 --sweep 1,3,6,12,24 --alone --unit-rows 128 --repeats 3 --json
//
// With --sweep the ranks measure every unit count of the list in one run, in
// groups of --group and (--alone) of one, --repeats times, each repeat in a
// rotated order; before each repeat rank 0 times the unit alone while the
// others wait (Note [Drifting hosts] in kiln/plan/host_profile.h: every
// round is a ratio to the unit timed seconds before it). Reported per
// (units, group): the rounds of each repeat and the unit time before it.
// `kiln plan calibrate` runs it once per ranks-per-core level.
#include <fmt/format.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "cli/command.h"
#include "cli/local_ranks.h"
#include "cli/torch/bench_mlp.h"
#include "kiln/base/blas_kernel.h"
#include "kiln/base/rank_cores.h"
#include "kiln/comm/process_group.h"
#include "kiln/parallel/mesh/device_mesh.h"
#include "kiln/parallel/pipeline/engine.h"
#include "kiln/plan/probe/sharing_probe.h"

namespace kiln::cli {
namespace {

struct HandoffArgs {
  std::vector<int> sweep;  // --sweep: unit counts to measure in one run
  bool alone = false;      // --sweep: groups of one as well
  int unit_rows = plan::probe::kDefaultUnitRows;
  double timing_s = 0.3;   // --sweep: seconds per timing (sets the rounds)
  int ranks = 4;
  int group = 2;
  int units = 4;
  int rounds = 20;
  int repeats = 3;
  int bytes = 64 * 1024;
  int pp = 1;
  int microbatches = 4;
  int messages = 4;
  bool json = false;
};

constexpr auto kTimeout = std::chrono::minutes(2);

// The median over `repeats` of the slowest rank's time for `times` calls of
// `body` (per call), each repeat starting together after a barrier.
Result<double> median_of_slowest(comm::Communicator& world, int repeats, int times,
                                 const std::function<Status()>& body) {
  std::vector<double> per_repeat;
  for (int r = 0; r < repeats; ++r) {
    KILN_RETURN_IF_ERROR(world.barrier()->wait(kTimeout));
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < times; ++i) KILN_RETURN_IF_ERROR(body());
    double mine = bench::since(t0) / times, slowest = 0;
    KILN_RETURN_IF_ERROR(
        world.allreduce(&mine, &slowest, 1, comm::DataType::kFloat64, comm::ReduceOp::kMax)
            ->wait(kTimeout));
    per_repeat.push_back(slowest);
  }
  return bench::median(per_repeat);
}

// Seconds on CLOCK_MONOTONIC, which every process of the host reads alike.
double monotonic_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Note [The group wait, measured]: the wait of Note [Pipeline hand-off] (in
// kiln/plan/host_profile.h) is the wall time a TP
// all-reduce takes after the later of its two ranks has posted it: the
// partner is there, the message is what remains. Fitting it as what is left
// of a whole probe step after the model's compute makes it the residual of
// two numbers ten times the waits' total (2% of the step is 0.16-0.77 ms
// per message: docs/plan.md, issue 18 session 10). So each rank stamps the
// moment it posts (µs since rank 0's start, as a float in the payload's
// first element, exact to 1 µs for 16 s), the all-reduce's max gives the
// later post, and the wait is the rank's clock when the all-reduce returns
// minus that. Recorded over the timed steps (or rounds), all ranks' waits
// gathered. The lockstep rounds record the same, so the two compare.
struct GroupWaits {
  std::size_t count = 0;
  double mean_s = 0, median_s = 0, p10_s = 0, p90_s = 0;
};

class GroupWaitRecorder {
 public:
  // Collective over `world`: one epoch for every rank's stamps.
  static Result<GroupWaitRecorder> start(comm::Communicator& world) {
    GroupWaitRecorder r;
    r.epoch_s_ = monotonic_s();
    KILN_RETURN_IF_ERROR(
        world.broadcast(&r.epoch_s_, 1, comm::DataType::kFloat64, 0)->wait(kTimeout));
    return r;
  }
  // Before the max all-reduce of `payload`; after it, with its result.
  void posting(float& payload) const {
    payload = static_cast<float>(std::round(1e6 * (monotonic_s() - epoch_s_)));
  }
  void returned(float later_post_us) {
    if (recording_) waits_.push_back(monotonic_s() - epoch_s_ - 1e-6 * later_post_us);
  }
  void record() { recording_ = true; }
  // Collective over `world`: every rank's waits.
  Result<GroupWaits> gather(comm::Communicator& world) const;

 private:
  double epoch_s_ = 0;
  bool recording_ = false;
  std::vector<double> waits_;
};

Result<GroupWaits> GroupWaitRecorder::gather(comm::Communicator& world) const {
  std::int64_t n = static_cast<std::int64_t>(waits_.size());
  std::vector<std::int64_t> counts(static_cast<std::size_t>(world.size()));
  KILN_RETURN_IF_ERROR(
      world.allgather(&n, counts.data(), 1, comm::DataType::kInt64)->wait(kTimeout));
  std::vector<std::size_t> sizes(counts.begin(), counts.end());
  std::vector<double> all(
      static_cast<std::size_t>(std::accumulate(counts.begin(), counts.end(), std::int64_t{0})));
  KILN_RETURN_IF_ERROR(
      world.allgatherv(waits_.data(), all.data(), sizes, comm::DataType::kFloat64)->wait(kTimeout));
  GroupWaits w;
  w.count = all.size();
  if (all.empty()) return w;
  std::sort(all.begin(), all.end());
  auto at = [&](double q) { return all[static_cast<std::size_t>(q * (all.size() - 1) + 0.5)]; };
  w.mean_s = std::accumulate(all.begin(), all.end(), 0.0) / all.size();
  w.median_s = bench::median(all);
  w.p10_s = at(0.1);
  w.p90_s = at(0.9);
  return w;
}

void add_group_waits(nlohmann::json& j, const GroupWaits& w) {
  j["group_waits"] = w.count;
  j["group_wait_mean_s"] = w.mean_s;
  j["group_wait_median_s"] = w.median_s;
  j["group_wait_p10_s"] = w.p10_s;
  j["group_wait_p90_s"] = w.p90_s;
}

std::string group_waits_text(const GroupWaits& w) {
  return fmt::format(
      "a group all-reduce after the later post: mean {:.0f} us, median {:.0f} us (p10 {:.0f}, "
      "p90 {:.0f}) over {} messages",
      1e6 * w.mean_s, 1e6 * w.median_s, 1e6 * w.p10_s, 1e6 * w.p90_s, w.count);
}

// --pp > 1: the pipeline-shaped probe (Note [Pipeline hand-off] in
// kiln/plan/host_profile.h). Activations carry no meaning: each stage passes
// its input on (times one, so autograd gives the engine its gradient), and
// the work and the group all-reduces stand for a stage's layers.
Status bench_handoff_pipeline(const HandoffArgs& a, comm::Communicator& world, int threads) {
  namespace pp = parallel::pipeline;
  KILN_ASSIGN_OR_RETURN(auto mesh,
                        parallel::DeviceMesh::create(world, {.tp = a.group, .pp = a.pp}));
  const pp::ScheduleSpec spec{pp::ScheduleKind::k1F1B, a.pp, a.microbatches, 1};
  KILN_RETURN_IF_ERROR(pp::validate(spec));
  pp::PipelineEngine engine(*mesh, spec,
                            std::chrono::duration_cast<std::chrono::milliseconds>(kTimeout));
  comm::Communicator& tensor = mesh->tensor();
  plan::probe::SharingWork work(a.unit_rows);
  std::vector<float> buf(static_cast<std::size_t>(a.bytes) / sizeof(float), 1.f);
  const std::int64_t width = static_cast<std::int64_t>(buf.size());
  const torch::Tensor first_input = torch::ones({width}).requires_grad_(true);
  KILN_ASSIGN_OR_RETURN(GroupWaitRecorder waits, GroupWaitRecorder::start(world));
  // `messages` times: `units` of work, then the group all-reduce (a
  // tensor-parallel layer half's compute and its activation all-reduce).
  auto layers = [&](int units) -> Status {
    for (int k = 0; k < a.messages; ++k) {
      work.run(units);
      if (a.group > 1) {
        waits.posting(buf[0]);
        KILN_RETURN_IF_ERROR(tensor.allreduce(buf.data(), buf.size(), comm::DataType::kFloat32,
                                              comm::ReduceOp::kMax)
                                 ->wait(kTimeout));
        waits.returned(buf[0]);
      }
    }
    return Status::ok();
  };
  Status failed;
  pp::StageCallbacks cb;
  cb.forward = [&](int, int, const torch::Tensor& input) -> torch::Tensor {
    if (Status s = layers(a.units); !s.is_ok() && failed.is_ok()) failed = s;
    const torch::Tensor x = input.defined() ? input : first_input;
    return engine.holds_loss() ? x.sum() * 0 : x * 1;
  };
  cb.backward = [&](int, int, const torch::Tensor& scalar, bool) -> Status {
    scalar.backward();
    return layers(2 * a.units);
  };
  cb.input_shape = [&](int) { return std::vector<std::int64_t>{width}; };
  auto step = [&]() -> Status {
    KILN_ASSIGN_OR_RETURN(pp::PipelineStepStats stats, engine.train_step(cb));
    (void)stats;
    return failed;
  };
  for (int i = 0; i < 2; ++i) KILN_RETURN_IF_ERROR(step());
  waits.record();
  KILN_ASSIGN_OR_RETURN(const double step_s, median_of_slowest(world, a.repeats, 1, step));
  KILN_ASSIGN_OR_RETURN(const GroupWaits w, waits.gather(world));
  if (world.rank() == 0) {
    if (a.json) {
      nlohmann::json j = {{"bench", "handoff"},
                          {"ranks", world.size()},
                          {"cores", sysconf(_SC_NPROCESSORS_ONLN)},
                          {"threads_per_rank", threads},
                          {"group", a.group},
                          {"pp", a.pp},
                          {"microbatches", a.microbatches},
                          {"messages", a.messages},
                          {"units", a.units},
                          {"bytes", a.bytes},
                          {"repeats", a.repeats},
                          {"step_s", step_s}};
      add_group_waits(j, w);
      fmt::print("{}\n", j.dump());
    } else {
      fmt::print(
          "{} stages of {} ranks, 1F1B over {} micro-batches, {} x {} units and a {}-byte group "
          "allreduce per forward (twice the units backward): {:.3f} ms per step; {}\n",
          a.pp, a.group, a.microbatches, a.messages, a.units, a.bytes, 1e3 * step_s,
          group_waits_text(w));
    }
  }
  return Status::ok();
}

// --sweep: every unit count in groups of `a.group` (and of one with --alone),
// --repeats times, rank 0 timing the unit alone before each repeat.
Status bench_handoff_sweep(const HandoffArgs& a, comm::Communicator& world, int threads) {
  std::vector<int> groups = {a.group};
  if (a.alone && a.group != 1) groups.push_back(1);
  std::vector<std::unique_ptr<comm::Communicator>> comms;
  for (const int g : groups) {
    KILN_ASSIGN_OR_RETURN(auto c, world.split(world.rank() / g, world.rank()));
    comms.push_back(std::move(c));
  }
  plan::probe::SharingWork work(a.unit_rows);
  std::vector<float> buf(static_cast<std::size_t>(a.bytes) / sizeof(float), 1.f);
  work.run(3);
  const long cores = std::max(1L, sysconf(_SC_NPROCESSORS_ONLN));
  const double share = std::max(1.0, static_cast<double>(world.size()) / static_cast<double>(cores));
  const std::size_t n = a.sweep.size() * groups.size();
  std::vector<std::vector<double>> rounds(n);
  std::vector<double> unit_s;
  for (int r = 0; r < a.repeats; ++r) {
    // The unit alone: rank 0 times it (3 batches of 10 ms) while the others
    // sleep. Not in a collective: a waiter spins and yields before it sleeps
    // (Note [Spin, then yield, then sleep]), and 7 waiters on 2 cores took
    // half of rank 0's core in the first try (its unit 0.91 ms against 0.45
    // at 1 rank per core). At 4 ranks per core the last ranks leave the
    // previous all-reduce milliseconds after rank 0, so rank 0 starts late.
    // Even so the unit came out 2.2x slow at 8 ranks on 2 cores (0.84 ms
    // against 0.38), so `kiln plan calibrate` takes its absolute scale from a
    // unit timed with no ranks running and uses these only for the drift
    // between repeats. A rank 0 slower than the sleep only loses the
    // remainder to spinning waiters; the all-reduce below synchronises.
    double unit = 0;
    if (world.rank() == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(40));
      unit = plan::probe::time_units(work, 3, 10e-3);
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(150));
    }
    double agreed = 0;
    KILN_RETURN_IF_ERROR(
        world.allreduce(&unit, &agreed, 1, comm::DataType::kFloat64, comm::ReduceOp::kMax)
            ->wait(kTimeout));
    unit_s.push_back(agreed);
    // Rotated each repeat, so a drift of the host spreads over all sizes.
    for (std::size_t i = 0; i < n; ++i) {
      const std::size_t k = (i + static_cast<std::size_t>(r)) % n;
      const int units = a.sweep[k / groups.size()];
      comm::Communicator& group = *comms[k % groups.size()];
      const int times = std::max(4, static_cast<int>(a.timing_s / (share * units * agreed)));
      KILN_ASSIGN_OR_RETURN(
          const double round_s, median_of_slowest(world, 1, times, [&]() -> Status {
            work.run(units);
            return group.allreduce(buf.data(), buf.size(), comm::DataType::kFloat32,
                                   comm::ReduceOp::kMax)
                ->wait(kTimeout);
          }));
      rounds[k].push_back(round_s);
    }
  }
  if (world.rank() != 0) return Status::ok();
  nlohmann::json samples = nlohmann::json::array();
  for (std::size_t k = 0; k < n; ++k) {
    samples.push_back({{"units", a.sweep[k / groups.size()]},
                       {"group", groups[k % groups.size()]},
                       {"round_s", rounds[k]}});
  }
  if (a.json) {
    nlohmann::json j = {{"bench", "handoff"},      {"sweep", true},
                        {"ranks", world.size()},   {"cores", cores},
                        {"threads_per_rank", threads}, {"unit_rows", a.unit_rows},
                        {"bytes", a.bytes},        {"repeats", a.repeats},
                        {"unit_s", unit_s},        {"samples", samples}};
    fmt::print("{}\n", j.dump());
  } else {
    fmt::print("{} ranks, unit ({} rows) alone {:.3f} ms (median of {} repeats)\n", world.size(),
               a.unit_rows, 1e3 * bench::median(unit_s), a.repeats);
    for (std::size_t k = 0; k < n; ++k) {
      fmt::print("  groups of {}, {} units per round: {:.3f} ms per round (median)\n",
                 groups[k % groups.size()], a.sweep[k / groups.size()],
                 1e3 * bench::median(rounds[k]));
    }
  }
  return Status::ok();
}

Status bench_handoff(const HandoffArgs& a) {
  if (a.ranks < 1 || a.group < 1 || a.units < 0 || a.rounds < 1 || a.repeats < 1 || a.bytes < 4) {
    return invalid_argument(fmt::format(
        "kiln bench handoff: --ranks {} --group {} --units {} --rounds {} --repeats {} --bytes {}: "
        "need positive ranks, group, rounds and repeats, units >= 0 and bytes >= 4",
        a.ranks, a.group, a.units, a.rounds, a.repeats, a.bytes));
  }
  if (a.ranks % a.group != 0) {
    return invalid_argument(
        fmt::format("kiln bench handoff: --group {} must divide --ranks {}", a.group, a.ranks));
  }
  if (a.pp < 1 || a.microbatches < 1 || a.messages < 1 || a.ranks % (a.group * a.pp) != 0) {
    return invalid_argument(fmt::format(
        "kiln bench handoff: --pp {} --microbatches {} --messages {}: need positive values and "
        "--group x --pp ({}) dividing --ranks {}",
        a.pp, a.microbatches, a.messages, a.group * a.pp, a.ranks));
  }
  if (a.unit_rows < 1 || !(a.timing_s > 0) ||
      std::any_of(a.sweep.begin(), a.sweep.end(), [](int u) { return u < 1; })) {
    return invalid_argument(fmt::format(
        "kiln bench handoff: --unit-rows {} --timing-s {} --sweep {}: need positive rows, timing "
        "and unit counts",
        a.unit_rows, a.timing_s, fmt::join(a.sweep, ",")));
  }
  if (!a.sweep.empty() && a.pp > 1) {
    return invalid_argument("kiln bench handoff: --sweep and --pp exclude each other");
  }
  if (auto spawned = run_as_local_ranks_unless_launched(a.ranks, "kiln bench handoff"))
    return *spawned;
  KILN_ASSIGN_OR_RETURN(auto pg, comm::ProcessGroup::from_env());
  comm::Communicator& world = pg->comm();
  if (world.size() % a.group != 0) {
    return invalid_argument(fmt::format(
        "kiln bench handoff: --group {} must divide the world size {}", a.group, world.size()));
  }
  // As kiln train: the rank's share of the cores (Note [A rank's share of
  // the cores] in kiln/base/rank_cores.h), both pools.
  const int threads = intra_op_threads_here();
  torch::set_num_threads(threads);
  set_openblas_threads(threads);
  if (a.pp > 1) return bench_handoff_pipeline(a, world, threads);
  if (!a.sweep.empty()) return bench_handoff_sweep(a, world, threads);
  KILN_ASSIGN_OR_RETURN(auto group, world.split(world.rank() / a.group, world.rank()));
  plan::probe::SharingWork work(a.unit_rows);
  std::vector<float> buf(static_cast<std::size_t>(a.bytes) / sizeof(float), 1.f);
  KILN_ASSIGN_OR_RETURN(GroupWaitRecorder waits, GroupWaitRecorder::start(world));
  auto round = [&]() -> Status {
    work.run(a.units);
    waits.posting(buf[0]);
    KILN_RETURN_IF_ERROR(
        group->allreduce(buf.data(), buf.size(), comm::DataType::kFloat32, comm::ReduceOp::kMax)
            ->wait(kTimeout));
    waits.returned(buf[0]);
    return Status::ok();
  };
  for (int i = 0; i < 3; ++i) KILN_RETURN_IF_ERROR(round());
  waits.record();
  KILN_ASSIGN_OR_RETURN(const double round_s,
                        median_of_slowest(world, a.repeats, a.rounds, round));
  KILN_ASSIGN_OR_RETURN(const GroupWaits w, waits.gather(world));
  if (world.rank() == 0) {
    if (a.json) {
      nlohmann::json j = {{"bench", "handoff"},
                          {"ranks", world.size()},
                          {"cores", sysconf(_SC_NPROCESSORS_ONLN)},
                          {"threads_per_rank", threads},
                          {"group", a.group},
                          {"units", a.units},
                          {"bytes", a.bytes},
                          {"rounds", a.rounds},
                          {"round_s", round_s}};
      if (a.group > 1) add_group_waits(j, w);
      fmt::print("{}\n", j.dump());
    } else {
      fmt::print(
          "{} ranks, groups of {}, {} units and a {}-byte allreduce per round: {:.3f} ms per "
          "round{}\n",
          world.size(), a.group, a.units, a.bytes, 1e3 * round_s,
          a.group > 1 ? "; " + group_waits_text(w) : "");
    }
  }
  return Status::ok();
}

const CommandRegistration kRegister("bench", [](CLI::App& parent) {
  auto a = std::make_shared<HandoffArgs>();
  auto* cmd = parent.add_subcommand(
      "handoff",
      "Ranks sharing cores: rounds of compute and a group allreduce (kiln plan calibrate's probe)");
  cmd->add_option("--ranks", a->ranks, "local ranks to start when not run under a launcher")
      ->capture_default_str();
  cmd->add_option("--group", a->group, "ranks per allreduce group (consecutive ranks)")
      ->capture_default_str();
  cmd->add_option("--units", a->units,
                  "units of work per round (a linear layer forward and backward)")
      ->capture_default_str();
  cmd->add_option("--rounds", a->rounds, "rounds per timing")->capture_default_str();
  cmd->add_option("--repeats", a->repeats, "timings; the median counts")->capture_default_str();
  cmd->add_option("--bytes", a->bytes, "allreduce payload per round")->capture_default_str();
  cmd->add_option("--pp", a->pp,
                  "pipeline stages of --group ranks each (> 1: the pipeline-shaped probe)")
      ->capture_default_str();
  cmd->add_option("--microbatches", a->microbatches, "micro-batches per step (with --pp)")
      ->capture_default_str();
  cmd->add_option("--messages", a->messages,
                  "group all-reduces per forward, each after --units of work (with --pp)")
      ->capture_default_str();
  cmd->add_option("--sweep", a->sweep,
                  "unit counts to measure in one run (comma-separated), the unit timed alone "
                  "before each repeat")
      ->delimiter(',');
  cmd->add_flag("--alone", a->alone, "with --sweep: groups of one as well");
  cmd->add_option("--unit-rows", a->unit_rows, "tokens per unit of work (its size)")
      ->capture_default_str();
  cmd->add_option("--timing-s", a->timing_s, "with --sweep: seconds per timing")
      ->capture_default_str();
  cmd->add_flag("--json", a->json, "one-line JSON on rank 0");
  cmd->callback(run_status([a] { return bench_handoff(*a); }));
});

}  // namespace
}  // namespace kiln::cli
