// `kiln train CONFIG.toml`: data-parallel training of a reference workload
// (examples/train/*.toml, schema in docs/train.md). Run it under a launcher
// for several ranks (`kiln launch -n 2 -- kiln train ...`); alone, it is one
// rank. The last line on stdout is the final evaluation.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

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
  std::string strategy;
  double memory_cap_mib = -1;
  int tp = 0, pp = 0, microbatches = 0;
  std::string schedule;
  std::string metrics_json;
  std::string ckpt_dir;
  bool no_resume = false;
  bool no_progress = false;
  std::string trace_dir;
  std::int64_t diag_every = -1;  // -1: 50 with --trace-dir, else off
  std::vector<std::string> inject;
  int metrics_port = -1;
  std::string metrics_host = "127.0.0.1";
};

// DIR/meta.json (rank 0): what ran, so `kiln diagnose` can say so beside
// its verdict. The per-rank rank-<r>/meta.json is the trace session's.
Status write_run_meta(const TrainArgs& a, const train::TrainOptions& o, int world) {
  std::error_code ec;
  std::filesystem::create_directories(a.trace_dir, ec);
  if (ec) return errno_status("create trace directory " + a.trace_dir, ec.value());
  std::ifstream config_in(a.config);
  std::stringstream config_text;
  config_text << config_in.rdbuf();
  nlohmann::json inject = nlohmann::json::array();
  for (const auto& i : o.diag.inject) inject.push_back(diag::injection_to_string(i));
  nlohmann::json meta = {{"format", "kiln-trace-dir"},  {"version", 1},
                         {"world_size", world},         {"config_path", a.config},
                         {"config", config_text.str()}, {"max_steps", o.config.train.max_steps},
                         {"diag_every", o.diag.every},  {"inject", inject}};
  const std::string path = a.trace_dir + "/meta.json";
  std::ofstream out(path, std::ios::trunc);
  out << meta.dump(2) << "\n";
  out.close();
  if (!out) return errno_status("write " + path, errno);
  return Status::ok();
}

Status train(const TrainArgs& a) {
  KILN_ASSIGN_OR_RETURN(train::TrainConfig config, train::parse_train_config_file(a.config));
  if (a.max_steps > 0) config.train.max_steps = a.max_steps;
  if (!a.strategy.empty()) {
    bool known = false;
    for (auto s : {train::Strategy::kDdp, train::Strategy::kZero1, train::Strategy::kZero2, train::Strategy::kZero3}) {
      if (a.strategy == train::strategy_name(s)) {
        config.parallel.strategy = s;
        known = true;
      }
    }
    if (!known) return invalid_argument("--strategy " + a.strategy + ": ddp, zero1, zero2 or zero3");
  }
  if (a.memory_cap_mib >= 0) config.parallel.memory_cap_mib = a.memory_cap_mib;
  if (a.tp > 0) config.parallel.tp = a.tp;
  if (a.pp > 0) config.parallel.pp = a.pp;
  if (a.microbatches > 0) config.parallel.microbatches = a.microbatches;
  if (!a.schedule.empty()) {
    config.parallel.schedule = a.schedule;
    if (a.schedule == "interleaved" && config.parallel.chunks == 1) config.parallel.chunks = 2;
    if (a.schedule == "1f1b") config.parallel.chunks = 1;
  }
  if (!a.ckpt_dir.empty()) config.checkpoint.dir = a.ckpt_dir;
  if (a.no_resume) config.checkpoint.resume = false;

  // Under a launcher (or srun) a world; alone, a world of one.
  std::unique_ptr<comm::ProcessGroup> group;
  std::unique_ptr<comm::Communicator> solo;
  comm::Communicator* comm = nullptr;
  if (comm::launched_in_world()) {
    KILN_ASSIGN_OR_RETURN(group, comm::ProcessGroup::from_env());
    comm = &group->comm();
  } else {
    KILN_ASSIGN_OR_RETURN(solo, comm::Communicator::create(std::make_shared<store::MemoryStore>(), 0, 1, {}));
    comm = solo.get();
  }
  set_log_rank(comm->rank());

  train::TrainOptions options{.config = config, .metrics_json = a.metrics_json,
                              .progress = !a.no_progress};
  options.diag.trace_dir = a.trace_dir;
  options.diag.every = a.diag_every >= 0 ? a.diag_every : (a.trace_dir.empty() ? 0 : 50);
  options.diag.metrics_port = a.metrics_port;
  options.diag.metrics_host = a.metrics_host;
  for (const auto& spec : a.inject) {
    KILN_ASSIGN_OR_RETURN(diag::Injection i, diag::parse_injection(spec));
    options.diag.inject.push_back(i);
  }
  if (!options.diag.inject.empty() && comm->rank() == 0) {
    log()->warn("fault injection on (a debugging tool): {} injected bottleneck(s)",
                options.diag.inject.size());
  }
  if (!a.trace_dir.empty() && comm->rank() == 0) {
    KILN_RETURN_IF_ERROR(write_run_meta(a, options, comm->size()));
  }
  Result<train::TrainResult> trained = train::run_training(options, *comm);
  if (!trained.is_ok()) {
    // Note [A failed rank aborts its group] (sharded_data_parallel.cc): the
    // peers learn that this rank failed instead of meeting its shutdown
    // barrier in the middle of a collective.
    comm->abort(trained.status());
    return trained.status();
  }
  train::TrainResult& r = *trained;
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
  cmd->add_option("--strategy", a->strategy,
                  "ddp, zero1, zero2 or zero3 (overrides parallel.strategy)");
  cmd->add_option("--memory-cap-mib", a->memory_cap_mib,
                  "per-rank cap on tensor memory, MiB; 0 = none (overrides parallel.memory_cap_mib)");
  cmd->add_option("--tp", a->tp, "tensor-parallel ranks (overrides parallel.tp)");
  cmd->add_option("--pp", a->pp, "pipeline stages (overrides parallel.pp)");
  cmd->add_option("--microbatches", a->microbatches,
                  "pipeline micro-batches per step (overrides parallel.microbatches)");
  cmd->add_option("--schedule", a->schedule, "1f1b or interleaved (overrides parallel.schedule)");
  cmd->add_option("--metrics-json", a->metrics_json,
                  "Write JSON lines: one per step (phase seconds) and one per evaluation");
  cmd->add_option("--ckpt-dir", a->ckpt_dir, "Checkpoint directory (overrides checkpoint.dir)");
  cmd->add_flag("--no-resume", a->no_resume, "Start from scratch even if checkpoints exist");
  cmd->add_flag("--no-progress", a->no_progress, "No live progress line");
  cmd->add_option("--trace-dir", a->trace_dir,
                  "Record per-rank Chrome traces, metrics and summaries here, for `kiln diagnose` "
                  "(docs/diag.md)");
  cmd->add_option("--diag-every", a->diag_every,
                  "Exchange step summaries and print the bottleneck verdict every N steps "
                  "(default 50 with --trace-dir, else off; 0 = off)");
  cmd->add_option(
      "--inject", a->inject,
      "Debugging: make a bottleneck on purpose: data-delay=MS, comm-delay=MS, "
      "compute-spin=MS, ckpt-sync or eval-delay=MS, each optionally @RANK (repeatable)");
  cmd->add_option("--metrics-port", a->metrics_port,
                  "Serve Prometheus text at :P/metrics (local rank r on P+r; 0 = any free port)");
  cmd->add_option("--metrics-host", a->metrics_host,
                  "Address the metrics endpoint binds (0.0.0.0: every interface)")
      ->capture_default_str();
  cmd->callback(run_status([a] { return train(*a); }));
});

}  // namespace
}  // namespace kiln::cli
