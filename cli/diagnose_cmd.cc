// `kiln diagnose DIR [--json] [--html FILE] [--skip N]`: the bottleneck
// verdict, offline, from a `kiln train --trace-dir DIR` directory
// (docs/diag.md): which resource the steps wait on, the evidence in
// numbers, the next thing to try, and the utilisation rule of thumb beside it.
#include <cstdio>
#include <memory>
#include <string>

#include "cli/command.h"
#include "kiln/diag/html_report.h"
#include "kiln/diag/trace_dir.h"

namespace kiln::cli {
namespace {

struct DiagnoseArgs {
  std::string dir;
  bool json = false;
  std::string html;
  std::int64_t skip = 5;
};

Status diagnose(const DiagnoseArgs& a) {
  KILN_ASSIGN_OR_RETURN(diag::TraceDir t, diag::read_trace_dir(a.dir));
  KILN_ASSIGN_OR_RETURN(diag::Verdict v, diag::diagnose(t, a.skip));
  if (!a.html.empty()) KILN_RETURN_IF_ERROR(diag::write_html_report(a.html, t, v, a.skip));
  if (a.json) {
    nlohmann::json j = diag::verdict_to_json(v);
    j["dir"] = a.dir;
    j["skip"] = a.skip;
    if (t.meta.contains("inject")) j["inject"] = t.meta["inject"];
    std::printf("%s\n", j.dump(2).c_str());
    return Status::ok();
  }
  std::printf("bottleneck: %s", v.verdict.c_str());
  if (v.rank >= 0) std::printf(" (rank %d)", v.rank);
  std::printf("\n");
  for (const auto& e : v.evidence) std::printf("  - %s\n", e.c_str());
  std::printf("next: %s\n", v.next.c_str());
  std::printf("phases:");
  for (const auto& [name, f] : v.phase_fractions) std::printf(" %s %.0f%%", name.c_str(), 100 * f);
  std::printf("\n%d ranks, %lld steps from step %lld, mean step %.2f ms\n", v.world_size,
              static_cast<long long>(v.steps), static_cast<long long>(a.skip), 1e3 * v.step_s);
  std::printf("rule of thumb (utilisation counters only): %s: %s\n", v.rule.verdict.c_str(),
              v.rule.reason.c_str());
  if (!a.html.empty()) std::printf("report: %s\n", a.html.c_str());
  return Status::ok();
}

const CommandRegistration kRegister("", [](CLI::App& parent) {
  auto a = std::make_shared<DiagnoseArgs>();
  auto* cmd = parent.add_subcommand(
      "diagnose", "Name the bottleneck of a run from its --trace-dir (docs/diag.md)");
  cmd->add_option("dir", a->dir, "A `kiln train --trace-dir` directory")->required();
  cmd->add_flag("--json", a->json,
                "Print one JSON document: verdict, evidence, next, phase_fractions, rank, "
                "rule_of_thumb");
  cmd->add_option("--html", a->html, "Also write a self-contained HTML report to this file");
  cmd->add_option("--skip", a->skip, "Leave out steps numbered below this (warm-up)")
      ->capture_default_str();
  cmd->callback(run_status([a] { return diagnose(*a); }));
});

}  // namespace
}  // namespace kiln::cli
