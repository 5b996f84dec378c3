#include "cli/command.h"

#include <cstdio>
#include <map>
#include <vector>

#include "cli/registry.h"

namespace kiln::cli {

std::vector<std::pair<std::string, CommandSetup>>& registered_commands() {
  static std::vector<std::pair<std::string, CommandSetup>> commands;
  return commands;
}

CommandRegistration::CommandRegistration(std::string parent_path, CommandSetup setup) {
  registered_commands().emplace_back(std::move(parent_path), std::move(setup));
}

int exit_code_for(const Status& status) {
  switch (status.code()) {
    case Code::kOk: return 0;
    case Code::kInvalidArgument:
    case Code::kFailedPrecondition: return 2;
    case Code::kNotFound:
    case Code::kDataLoss: return 3;
    case Code::kAborted:
    case Code::kUnavailable:
    case Code::kDeadlineExceeded: return 4;
    default: return 1;
  }
}

namespace {
bool started = false;
}  // namespace

bool command_started() { return started; }

std::function<void()> run_status(std::function<Status()> body) {
  return [body = std::move(body)] {
    started = true;
    Status s = body();
    if (!s.is_ok()) {
      std::fprintf(stderr, "kiln: %s\n", s.to_string().c_str());
      throw CLI::RuntimeError(exit_code_for(s));
    }
  };
}

}  // namespace kiln::cli
