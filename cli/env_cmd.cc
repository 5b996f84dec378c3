// `kiln env`: every knob (environment variable) Kiln reads, its default and
// its current value; then the BLAS kernels LibTorch will run.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "cli/command.h"
#include "kiln/base/blas_kernel.h"
#include "kiln/base/knobs.h"

namespace kiln::cli {
namespace {

const CommandRegistration kRegister("", [](CLI::App& parent) {
  auto* cmd =
      parent.add_subcommand("env", "List the KILN_* knobs with defaults and current values");
  cmd->callback(run_status([] {
    for (const auto& k : registered_knobs()) {
      const char* now = std::getenv(k.name.c_str());
      // Secrets (KILN_JOB_TOKEN) are listed, never printed.
      bool secret = k.name.size() > 6 && k.name.ends_with("_TOKEN");
      if (secret && now != nullptr) now = "(set, hidden)";
      std::printf("%-28s default=%-10s %s%s\n    %s\n", k.name.c_str(), k.default_value.c_str(),
                  now ? "now=" : "", now ? now : "", k.doc.c_str());
    }
    // Note [OpenBLAS on CPUs it does not know] in kiln/base/blas_kernel.h.
    std::string core = openblas_core_in_use();
    if (core.empty()) {
      std::printf("blas: not OpenBLAS\n");
      return Status::ok();
    }
    std::string better = std::getenv("OPENBLAS_CORETYPE") != nullptr
                             ? ""
                             : better_openblas_core(core, CpuVectorFeatures::of_this_cpu());
    std::printf("blas: OpenBLAS core %s%s%s\n", core.c_str(),
                better.empty()
                    ? ""
                    : "; kiln train, launch, run and bench ddp switch to OPENBLAS_CORETYPE=",
                better.c_str());
    return Status::ok();
  }));
});

}  // namespace
}  // namespace kiln::cli
