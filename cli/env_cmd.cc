// `kiln env`: every knob (environment variable) Kiln reads, its default and
// its current value.
#include <cstdio>
#include <cstdlib>

#include "cli/command.h"
#include "kiln/base/knobs.h"

namespace kiln::cli {
namespace {

const CommandRegistration kRegister("", [](CLI::App& parent) {
  auto* cmd = parent.add_subcommand("env", "List the KILN_* knobs with defaults and current values");
  cmd->callback(run_status([] {
    for (const auto& k : registered_knobs()) {
      const char* now = std::getenv(k.name.c_str());
      std::printf("%-28s default=%-10s %s%s\n    %s\n", k.name.c_str(), k.default_value.c_str(),
                  now ? "now=" : "", now ? now : "", k.doc.c_str());
    }
    return Status::ok();
  }));
});

}  // namespace
}  // namespace kiln::cli
