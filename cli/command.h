// Subcommand registration for the `kiln` executable.
//
// Each cli/*_cmd.cc file registers its subcommand with a static
// CommandRegistration, naming the parent path ("" for top level, "bench" for
// `kiln bench comm`). The command's callback returns a Status; main() maps it
// to an exit code (docs/errors.md) and prints it.
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include <CLI/CLI.hpp>

#include "kiln/base/status.h"

namespace kiln::cli {

// Adds a subcommand to `parent` and sets its callback.
using CommandSetup = std::function<void(CLI::App& parent)>;

struct CommandRegistration {
  CommandRegistration(std::string parent_path, CommandSetup setup);
};

// Wraps a Status-returning body as a CLI11 callback: a non-ok Status is
// printed to stderr and becomes the process exit code.
std::function<void()> run_status(std::function<Status()> body);

// Exit code for a Status: 0 ok, 2 bad usage/input, 3 not found / data loss,
// 4 aborted/unavailable/deadline (retryable by a launcher), 1 otherwise.
int exit_code_for(const Status& status);

}  // namespace kiln::cli
