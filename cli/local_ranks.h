// Starting N local ranks of a command with the torchrun environment: the
// core of `kiln launch`, and how a benchmark typed on its own gets its ranks.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "kiln/base/status.h"

namespace kiln::cli {

struct LocalRanksOptions {
  int ranks = 1;
  std::vector<std::string> command;  // argv; argv[0] is looked up in PATH
  // After the first rank fails, the others get this long to fail or finish
  // on their own (Kiln's collectives notice a dead peer), then are killed.
  double grace_s = 10;
  std::string bind = "auto";  // auto, core, none (Note [Binding ranks to cores])
  // true: each rank's stdout and stderr, merged, are forwarded line by line
  // with a "[rank N] " prefix (kiln launch). false: the ranks write straight
  // to this process's stdout and stderr, so a benchmark's JSON on stdout
  // stays parseable.
  bool prefix_output = true;
  // false: any failure is Aborted (kiln launch: a launcher's failure is
  // retryable). true: the first failed rank's exit code comes back as the
  // code that maps to it (docs/errors.md), so a benchmark that spawned its
  // own ranks exits as its ranks did (3 for DataLoss, 2 for bad input...).
  bool keep_exit_code = false;
  std::string who = "kiln launch";  // names the caller in errors
  // The job token (docs/security.md): read from this file (mode 600), else
  // KILN_JOB_TOKEN, else a fresh one; the store and the ranks' connections
  // require it, and the ranks find it in KILN_JOB_TOKEN.
  std::string token_file;
};

// Serves a rendezvous store on loopback, forks and execs `ranks` processes
// with RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK,
// MASTER_ADDR and MASTER_PORT set, and blocks until every one has exited.
// Returns ok when all exit 0; Aborted naming each failed rank otherwise
// (see keep_exit_code); InvalidArgument for bad options.
Status run_local_ranks(const LocalRanksOptions& options);

// For commands that need ranks (`kiln bench comm/ckpt/ddp`): under a
// launcher (RANK is set) returns nullopt and the caller runs as its rank.
// Otherwise runs this very command line (/proc/self/exe with this process's
// arguments) as `ranks` local ranks, their output unprefixed, and returns
// their outcome; the caller returns it without running anything itself.
std::optional<Status> run_as_local_ranks_unless_launched(int ranks, const std::string& who);

}  // namespace kiln::cli
