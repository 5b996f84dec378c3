// `kiln train CONFIG.toml`: data-parallel training of a reference workload
// (examples/train/*.toml, schema in docs/train.md). Run it under a launcher
// for several ranks (`kiln launch -n 2 -- kiln train ...`); alone, it is one
// rank. The last line on stdout is the final evaluation.
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include <fmt/format.h>

#include "cli/command.h"
#include "kiln/base/logging.h"
#include "kiln/comm/process_group.h"
#include "kiln/store/memory_store.h"
#include "kiln/train/trainer.h"

namespace kiln::cli {
namespace {

struct TrainArgs {
  std::string config;
  std::int64_t max_steps = 0;
  std::string metrics_json;
  std::string ckpt_dir;
  bool no_resume = false;
  bool no_progress = false;
};

Status train(const TrainArgs& a) {
  KILN_ASSIGN_OR_RETURN(train::TrainConfig config, train::parse_train_config_file(a.config));
  if (a.max_steps > 0) config.train.max_steps = a.max_steps;
  if (!a.ckpt_dir.empty()) config.checkpoint.dir = a.ckpt_dir;
  if (a.no_resume) config.checkpoint.resume = false;

  // Under a launcher RANK is set; alone, a world of one.
  std::unique_ptr<comm::ProcessGroup> group;
  std::unique_ptr<comm::Communicator> solo;
  comm::Communicator* comm = nullptr;
  if (std::getenv("RANK") != nullptr) {
    KILN_ASSIGN_OR_RETURN(group, comm::ProcessGroup::from_env());
    comm = &group->comm();
  } else {
    KILN_ASSIGN_OR_RETURN(solo, comm::Communicator::create(std::make_shared<store::MemoryStore>(), 0, 1, {}));
    comm = solo.get();
  }
  set_log_rank(comm->rank());

  train::TrainOptions options{.config = config, .metrics_json = a.metrics_json,
                              .progress = !a.no_progress};
  KILN_ASSIGN_OR_RETURN(train::TrainResult r, train::run_training(options, *comm));
  if (r.stopped) {
    if (comm->rank() == 0) {
      std::printf("stopped: step %lld checkpointed on request (%.1f s, %d ranks)\n",
                  static_cast<long long>(r.steps), r.seconds, comm->size());
      std::fflush(stdout);
    }
    return Status::ok();
  }
  if (comm->rank() == 0) {
    std::string accuracy = r.eval_accuracy ? fmt::format(" eval_accuracy {:.4f}", *r.eval_accuracy) : "";
    std::printf("final: step %lld eval_loss %.4f%s params_xxh3 %016llx (%.1f s, %d ranks)\n",
                static_cast<long long>(r.steps), r.eval_loss, accuracy.c_str(),
                static_cast<unsigned long long>(r.parameter_digest), r.seconds, comm->size());
    std::fflush(stdout);
  }
  return Status::ok();
}

const CommandRegistration kRegister("", [](CLI::App& parent) {
  auto a = std::make_shared<TrainArgs>();
  auto* cmd = parent.add_subcommand("train", "Train a model from a TOML config (docs/train.md)");
  cmd->add_option("config", a->config, "Config file, e.g. examples/train/fashion_mnist.toml")
      ->required();
  cmd->add_option("--max-steps", a->max_steps, "Stop after this many steps (overrides train.max_steps)");
  cmd->add_option("--metrics-json", a->metrics_json,
                  "Write JSON lines: one per step (phase seconds) and one per evaluation");
  cmd->add_option("--ckpt-dir", a->ckpt_dir, "Checkpoint directory (overrides checkpoint.dir)");
  cmd->add_flag("--no-resume", a->no_resume, "Start from scratch even if checkpoints exist");
  cmd->add_flag("--no-progress", a->no_progress, "No live progress line");
  cmd->callback(run_status([a] { return train(*a); }));
});

}  // namespace
}  // namespace kiln::cli
