// Internal to cli/: the list CommandRegistration appends to.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "cli/command.h"

namespace kiln::cli {
std::vector<std::pair<std::string, CommandSetup>>& registered_commands();

// True once a command's body began (run_status): from then on the command
// line is this process's to finish, never handed to another executable.
bool command_started();
}  // namespace kiln::cli
