// `kiln`: one executable, one subcommand per cli/*_cmd.cc file.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstring>
#include <map>

#include "cli/registry.h"
#include "kiln/base/blas_kernel.h"

namespace {

// Finds or creates the subcommand group at `path` ("bench", "data", ...).
CLI::App* parent_for(CLI::App& root, const std::string& path) {
  if (path.empty()) return &root;
  CLI::App* app = &root;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find(' ', start);
    std::string name =
        path.substr(start, end == std::string::npos ? std::string::npos : end - start);
    CLI::App* child = nullptr;
    try {
      child = app->get_subcommand(name);
    } catch (const CLI::OptionNotFound&) {
      child = app->add_subcommand(name, "kiln " + path.substr(0, end) + " subcommands");
      child->require_subcommand(1);
    }
    app = child;
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return app;
}

// The commands that multiply matrices, or start processes that do: they
// must not run OpenBLAS's generic kernels (Note [OpenBLAS on CPUs it does not
// know] in kiln/base/blas_kernel.h). Other commands skip the re-exec.
bool runs_matrix_products(int argc, char** argv) {
  if (argc < 2) return false;
  for (const char* cmd : {"train", "launch", "run", "serve"}) {
    if (std::strcmp(argv[1], cmd) == 0) return true;
  }
  if (argc >= 3 && std::strcmp(argv[1], "plan") == 0) return std::strcmp(argv[2], "calibrate") == 0;
  return argc >= 3 && std::strcmp(argv[1], "bench") == 0 &&
         (std::strcmp(argv[2], "ddp") == 0 || std::strcmp(argv[2], "serve") == 0);
}

}  // namespace

int main(int argc, char** argv) {
  if (runs_matrix_products(argc, argv)) kiln::reexec_if_blas_runs_generic_kernels(argv);
  CLI::App app{"kiln: a runtime for fault-tolerant distributed training"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "kiln 0.1.0");

  auto commands = kiln::cli::registered_commands();
  // Parents before children, so "bench" exists before "bench comm" is added.
  std::stable_sort(commands.begin(), commands.end(),
                   [](const auto& a, const auto& b) { return a.first.size() < b.first.size(); });
  for (auto& [parent, setup] : commands) setup(*parent_for(app, parent));

  CLI11_PARSE(app, argc, argv);
  return 0;
}
