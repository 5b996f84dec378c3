// `kiln plan`: the training-cluster planner (docs/plan.md).
//
//   kiln plan CONFIG.toml [--json] [--svg FILE] [--set section.key=value]...
//   kiln plan CONFIG.toml --search [--top N] [--json]
//   kiln plan CONFIG.toml --profile HOST.toml [--tp N --pp N --dp N --microbatches N] [--json]
//   kiln plan validate FILE.csv... [--json] [--loso] [--fit]
//   kiln plan calibrate [-o HOST.toml] [--quick]     (cli/torch/plan_calibrate_cmd.cc)
//
// `validate` is a subcommand of `plan` while CONFIG.toml is plan's optional
// positional: CLI11 matches a subcommand name before filling a positional, so
// `kiln plan validate x.csv` reaches validate and `kiln plan x.toml` fills the
// positional. plan's own callback runs after a subcommand's and does nothing then.
#include <cerrno>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "cli/command.h"
#include "kiln/plan/config.h"
#include "kiln/plan/host_report.h"
#include "kiln/plan/host_step_time.h"
#include "kiln/plan/plan.h"
#include "kiln/plan/report.h"
#include "kiln/plan/search.h"
#include "kiln/plan/validate.h"

namespace kiln::cli {
namespace {

struct PlanOptions {
  std::string config;
  bool json = false;
  std::string svg;
  bool search = false;
  int top = 10;
  std::vector<std::string> sets;
  // Shortcuts for common overrides; empty = not given.
  std::string tp, pp, dp, vpp, micro_batch, microbatches, global_batch, recompute, zero, nodes,
      gpu, profile;
};

struct ValidateOptions {
  std::vector<std::string> csvs;
  bool json = false;
  bool loso = false;
  bool fit = false;
};

std::vector<std::string> overrides(const PlanOptions& o) {
  std::vector<std::string> out;
  auto add = [&](const char* key, const std::string& v) {
    if (!v.empty()) out.push_back(std::string(key) + "=" + v);
  };
  add("layout.tp", o.tp);
  add("layout.pp", o.pp);
  add("layout.dp", o.dp);
  add("layout.vpp", o.vpp);
  add("layout.micro_batch", o.micro_batch);
  add("layout.microbatches", o.microbatches);
  add("layout.global_batch", o.global_batch);
  add("layout.recompute", o.recompute.empty() ? "" : "\"" + o.recompute + "\"");
  add("layout.zero", o.zero);
  add("cluster.nodes", o.nodes);
  add("cluster.gpu", o.gpu.empty() ? "" : "\"" + o.gpu + "\"");
  // Relative to the working directory here (in the file, to the file).
  add("cluster.profile", o.profile.empty() ? ""
                                           : "'" + std::filesystem::absolute(o.profile).string() + "'");
  out.insert(out.end(), o.sets.begin(), o.sets.end());
  return out;
}

Status write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return errno_status("kiln plan: open " + path + " for writing", errno);
  out << text;
  out.close();
  if (!out) return errno_status("kiln plan: write " + path, errno);
  return Status::ok();
}

// A CPU host measured by `kiln plan calibrate` (cluster.profile or --profile).
Status run_host_plan(const PlanOptions& o, const plan::PlanConfig& config) {
  if (o.search || !o.svg.empty()) {
    return invalid_argument("kiln plan: --search and --svg are for GPU clusters, not CPU host profiles");
  }
  KILN_ASSIGN_OR_RETURN(plan::HostStepTime st, plan::host_step_time(config));
  if (o.json) {
    std::printf("%s\n", plan::host_plan_to_json(config, st).dump(2).c_str());
  } else {
    std::fputs(plan::format_host_plan(config, st).c_str(), stdout);
  }
  return Status::ok();
}

Status run_plan(const PlanOptions& o) {
  if (o.config.empty()) {
    return invalid_argument(
        "kiln plan: missing CONFIG.toml (usage: kiln plan CONFIG.toml [--json] [--svg FILE] "
        "[--search], or kiln plan validate FILE.csv)");
  }
  KILN_ASSIGN_OR_RETURN(plan::PlanConfig config, plan::parse_config_file(o.config, overrides(o)));
  if (config.cluster.host) return run_host_plan(o, config);
  if (o.search) {
    plan::SearchOptions so;
    so.top = o.top;
    const plan::SearchResult r = plan::search_layouts(config, so);
    if (o.json) {
      std::printf("%s\n", plan::search_to_json(r).dump(2).c_str());
    } else {
      std::fputs(plan::format_search(r, config).c_str(), stdout);
    }
    return Status::ok();
  }
  KILN_ASSIGN_OR_RETURN(plan::Plan p, plan::make_plan(config));
  if (!o.svg.empty()) KILN_RETURN_IF_ERROR(write_file(o.svg, plan::render_svg(p)));
  if (o.json) {
    std::printf("%s\n", plan::plan_to_json(p).dump(2).c_str());
  } else {
    std::fputs(plan::format_plan(p).c_str(), stdout);
    if (!o.svg.empty()) std::printf("\nwrote %s\n", o.svg.c_str());
  }
  return Status::ok();
}

Status run_validate(const ValidateOptions& o) {
  KILN_ASSIGN_OR_RETURN(plan::ValidationReport r, plan::validate_files(o.csvs));
  if (o.loso) {
    const plan::LosoReport loso = plan::leave_one_source_out(r);
    if (o.json) {
      std::printf("%s\n", plan::loso_to_json(loso).dump(2).c_str());
    } else {
      std::fputs(plan::format_loso(loso).c_str(), stdout);
    }
    return Status::ok();
  }
  if (o.fit) {
    std::vector<plan::FitSample> samples;
    for (const auto& row : r.rows) {
      if (row.config && row.measured_s) samples.push_back({*row.config, *row.measured_s});
    }
    const plan::EfficiencyModel fitted = plan::fit_efficiency(samples);
    plan::repredict(r, fitted);
    std::fprintf(o.json ? stderr : stdout,
                 "constants fitted on all %zu measured rows (mean |log error| %.4f -> %.4f):\n%s\n",
                 samples.size(), plan::fit_loss(samples, plan::EfficiencyModel::defaults()),
                 plan::fit_loss(samples, fitted), plan::format_constants(fitted).c_str());
  }
  if (o.json) {
    std::printf("%s\n", plan::validation_to_json(r).dump(2).c_str());
  } else {
    std::fputs(plan::format_validation(r).c_str(), stdout);
  }
  return Status::ok();
}

const CommandRegistration kRegister("", [](CLI::App& parent) {
  auto* cmd = parent.add_subcommand(
      "plan", "Predict memory, step time, MFU, bottleneck and checkpoint interval of a layout");
  auto opts = std::make_shared<PlanOptions>();
  cmd->add_option("config", opts->config, "plan file (TOML; schema in docs/plan.md)");
  cmd->add_flag("--json", opts->json, "print one JSON document instead of the report");
  cmd->add_option("--svg", opts->svg, "also draw the step-time and memory breakdowns to FILE");
  cmd->add_flag("--search", opts->search, "rank feasible layouts by predicted tokens/s");
  cmd->add_option("--top", opts->top, "layouts to list with --search")->capture_default_str();
  cmd->add_option("--set", opts->sets, "override a field: section.key=value (repeatable)")
      ->allow_extra_args(false);
  cmd->add_option("--tp", opts->tp, "override layout.tp");
  cmd->add_option("--pp", opts->pp, "override layout.pp");
  cmd->add_option("--dp", opts->dp, "override layout.dp");
  cmd->add_option("--vpp", opts->vpp, "override layout.vpp");
  cmd->add_option("--micro-batch", opts->micro_batch, "override layout.micro_batch");
  cmd->add_option("--microbatches", opts->microbatches,
                  "override layout.microbatches (micro-batches per step, as kiln train counts them)");
  cmd->add_option("--global-batch", opts->global_batch, "override layout.global_batch");
  cmd->add_option("--recompute", opts->recompute,
                  "override layout.recompute: none|selective|full|save_qkv");
  cmd->add_option("--zero", opts->zero, "override layout.zero: 0..3");
  cmd->add_option("--nodes", opts->nodes, "override cluster.nodes");
  cmd->add_option("--gpu", opts->gpu, "override cluster.gpu");
  cmd->add_option("--profile", opts->profile,
                  "plan for the CPU host this profile describes (kiln plan calibrate writes one)");

  auto* val = cmd->add_subcommand(
      "validate", "Compare predicted and measured step times of published runs (CSV)");
  auto vopts = std::make_shared<ValidateOptions>();
  val->add_option("csv", vopts->csvs,
                  "runs in the schema of examples/plan/runs/calibration.csv (its README lists the "
                  "columns); several files are read as one set")
      ->required();
  val->add_flag("--json", vopts->json, "print one JSON document");
  val->add_flag("--loso", vopts->loso,
                "leave-one-source-out: predict each source's runs with the global constants "
                "refitted on all other sources (column source_id)");
  val->add_flag("--fit", vopts->fit,
                "refit the global constants on all measured rows and predict with them");
  val->callback(run_status([vopts] { return run_validate(*vopts); }));

  cmd->callback(run_status([opts, cmd] {
    if (!cmd->get_subcommands().empty()) return Status::ok();  // validate or calibrate ran
    return run_plan(*opts);
  }));
});

}  // namespace
}  // namespace kiln::cli
