// Test support: runs a function on N real processes (fork) that form a
// Communicator through a FileStore in a fresh temporary directory.
//
//   auto result = run_ranks(4, [](Communicator& comm) -> Status { ... });
//   EXPECT_TRUE(result.ok()) << result.report;
//
// Each child exits 0 on an ok Status, 1 otherwise (printing the Status); the
// parent kills every child still running at the deadline, so a hang fails the
// test instead of stalling the suite. The report names each failed rank's
// own Status and when it exited, so the rank that failed first (the cause;
// the others mostly report its abort) is read off the report alone, not
// looked for among every rank's interleaved log lines.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/comm/communicator.h"

namespace kiln::comm::testing {

struct RankOutcome {
  int exit_code = -1;  // -1: killed by a signal or at the deadline
  int signal = 0;
  bool timed_out = false;
  double exited_after_s = 0;  // since run_ranks started
  std::string status;         // the body's (or forming's) failed Status; "" if none was returned
};

struct RunResult {
  std::vector<RankOutcome> ranks;
  // One line per failed rank, in the order they were reaped (the harness
  // polls; ranks that exit within one poll come in rank order): how it
  // ended, when, and its own Status.
  std::string report;
  bool ok() const;
};

struct RunOptions {
  std::chrono::seconds deadline{120};
  CommOptions comm;
  // Environment set in every child before the communicator forms.
  std::map<std::string, std::string> env;
  // Extra environment for one rank (e.g. KILN_HOST_ID to simulate hosts).
  std::function<std::map<std::string, std::string>(int rank)> env_for_rank;
};

RunResult run_ranks(int n, const std::function<Status(Communicator&)>& body, RunOptions options = {});

}  // namespace kiln::comm::testing
