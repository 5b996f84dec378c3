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
#include <fmt/format.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "cli/command.h"
#include "cli/local_ranks.h"
#include "cli/torch/bench_mlp.h"
#include "kiln/base/blas_kernel.h"
#include "kiln/comm/process_group.h"
#include "kiln/plan/probe/sharing_probe.h"

namespace kiln::cli {
namespace {

struct HandoffArgs {
  int ranks = 4;
  int group = 2;
  int units = 4;
  int rounds = 20;
  int repeats = 3;
  int bytes = 64 * 1024;
  bool json = false;
};

constexpr auto kTimeout = std::chrono::minutes(2);

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
  if (auto spawned = run_as_local_ranks_unless_launched(a.ranks, "kiln bench handoff"))
    return *spawned;
  KILN_ASSIGN_OR_RETURN(auto pg, comm::ProcessGroup::from_env());
  comm::Communicator& world = pg->comm();
  if (world.size() % a.group != 0) {
    return invalid_argument(fmt::format(
        "kiln bench handoff: --group {} must divide the world size {}", a.group, world.size()));
  }
  // As kiln train: cores / local ranks intra-op threads (at least 1), both pools.
  const char* local = std::getenv("LOCAL_WORLD_SIZE");
  const int threads = std::max(1, static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN)) /
                                      std::max(1, local ? std::atoi(local) : 1));
  torch::set_num_threads(threads);
  set_openblas_threads(threads);
  KILN_ASSIGN_OR_RETURN(auto group, world.split(world.rank() / a.group, world.rank()));
  plan::probe::SharingWork work;
  std::vector<float> buf(static_cast<std::size_t>(a.bytes) / sizeof(float), 1.f);
  auto round = [&]() -> Status {
    work.run(a.units);
    return group->allreduce(buf.data(), buf.size(), comm::DataType::kFloat32, comm::ReduceOp::kMax)
        ->wait(kTimeout);
  };
  for (int i = 0; i < 3; ++i) KILN_RETURN_IF_ERROR(round());
  std::vector<double> per_round;
  for (int r = 0; r < a.repeats; ++r) {
    KILN_RETURN_IF_ERROR(world.barrier()->wait(kTimeout));
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < a.rounds; ++i) KILN_RETURN_IF_ERROR(round());
    double mine = bench::since(t0) / a.rounds, slowest = 0;
    KILN_RETURN_IF_ERROR(
        world.allreduce(&mine, &slowest, 1, comm::DataType::kFloat64, comm::ReduceOp::kMax)
            ->wait(kTimeout));
    per_round.push_back(slowest);
  }
  const double round_s = bench::median(per_round);
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
      fmt::print("{}\n", j.dump());
    } else {
      fmt::print(
          "{} ranks, groups of {}, {} units and a {}-byte allreduce per round: {:.3f} ms per "
          "round\n",
          world.size(), a.group, a.units, a.bytes, 1e3 * round_s);
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
  cmd->add_flag("--json", a->json, "one-line JSON on rank 0");
  cmd->callback(run_status([a] { return bench_handoff(*a); }));
});

}  // namespace
}  // namespace kiln::cli
