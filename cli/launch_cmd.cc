// `kiln launch -n N -- CMD ARGS...`: runs N local ranks of CMD with the
// torchrun environment set, prefixes their output with the rank, and exits
// non-zero if any rank fails. The launcher serves the rendezvous store.
// (A simple spawner; the elastic launcher is `kiln run`.)
#include <memory>
#include <string>
#include <vector>

#include "cli/command.h"
#include "cli/local_ranks.h"

namespace kiln::cli {
namespace {

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
  cmd->add_option("--bind", args->bind, "bind each rank to a core: auto (when there are enough cores), core, none");
  cmd->add_option("--token-file", args->token_file,
                  "read the job token from FILE (mode 600) instead of KILN_JOB_TOKEN or a fresh one");
  cmd->add_option("command", args->cmd, "the command and its arguments (after --)")->required();
  cmd->callback(run_status([args] {
    return run_local_ranks(
        {.ranks = args->n, .command = args->cmd, .grace_s = args->grace_s, .bind = args->bind,
         .token_file = args->token_file});
  }));
});

}  // namespace
}  // namespace kiln::cli
