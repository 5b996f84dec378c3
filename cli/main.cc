// `kiln`: one executable, one subcommand per cli/*_cmd.cc file.
#include <algorithm>
#include <map>

#include <CLI/CLI.hpp>

#include "cli/registry.h"

namespace {

// Finds or creates the subcommand group at `path` ("bench", "data", ...).
CLI::App* parent_for(CLI::App& root, const std::string& path) {
  if (path.empty()) return &root;
  CLI::App* app = &root;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find(' ', start);
    std::string name = path.substr(start, end == std::string::npos ? std::string::npos : end - start);
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

}  // namespace

int main(int argc, char** argv) {
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
