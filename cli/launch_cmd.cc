// `kiln launch -n N -- CMD ARGS...`: runs N local ranks of CMD with the
// torchrun environment set (kiln/elastic/worker_env.h), prefixes their
// output with the rank, and exits non-zero if any rank fails. The launcher
// serves the rendezvous store. (A simple spawner; the elastic launcher is
// `kiln run`; cli/local_ranks.h does the work.)
#include <fmt/format.h>

#include <memory>
#include <string>
#include <vector>

#include "cli/command.h"
#include "cli/local_ranks.h"
#include "kiln/base/slurm.h"

namespace kiln::cli {
namespace {

// One kiln launch spans one node: several tasks of a Slurm step would each
// start a world of their own.
Status refuse_multi_task_slurm_step() {
  KILN_ASSIGN_OR_RETURN(auto step, slurm_step_from_env());
  if (step && step->ntasks > 1) {
    return invalid_argument(fmt::format(
        "kiln launch: this is task {} of a {}-task Slurm step, and kiln launch runs one node: "
        "use `srun -n N CMD` (Kiln's workers take their rank from the step) or "
        "`srun --ntasks-per-node=1 kiln run --nproc-per-node N -- CMD`",
        step->procid, step->ntasks));
  }
  return Status::ok();
}

struct LaunchArgs {
  int n = 1;
  double grace_s = 10;
  std::string bind = "auto";
  std::string token_file;
  std::vector<std::string> cmd;
};

const CommandRegistration kRegister("", [](CLI::App& parent) {
  auto args = std::make_shared<LaunchArgs>();
  auto* cmd = parent.add_subcommand("launch", "Run N local ranks of a command with RANK/WORLD_SIZE/MASTER_* set");
  cmd->add_option("-n,--nproc", args->n, "number of ranks")->required();
  cmd->add_option("--grace", args->grace_s, "seconds the other ranks get after one fails, before they are killed");
  cmd->add_option("--bind", args->bind, "bind each rank to its share of the cores: auto (when there are enough cores), core, none");
  cmd->add_option("--token-file", args->token_file,
                  "read the job token from FILE (mode 600) instead of KILN_JOB_TOKEN or a fresh one");
  cmd->add_option("command", args->cmd, "the command and its arguments (after --)")->required();
  cmd->callback(run_status([args] {
    KILN_RETURN_IF_ERROR(refuse_multi_task_slurm_step());
    return run_local_ranks(
        {.ranks = args->n, .command = args->cmd, .grace_s = args->grace_s, .bind = args->bind,
         .token_file = args->token_file});
  }));
});

}  // namespace
}  // namespace kiln::cli
