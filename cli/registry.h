// Internal to cli/: the list CommandRegistration appends to.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "cli/command.h"

namespace kiln::cli {
std::vector<std::pair<std::string, CommandSetup>>& registered_commands();
}  // namespace kiln::cli
