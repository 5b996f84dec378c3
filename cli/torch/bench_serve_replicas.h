// The `kiln serve` processes of `kiln bench serve`: each a child of the
// bench running this binary's `serve`, its output in a file the bench reads
// for the lines it waits on (the port it listens on, its cold start).
#pragma once

#include <sched.h>
#include <sys/types.h>

#include <string>
#include <vector>

#include "kiln/base/status.h"

namespace kiln::cli::bench_serve {

// A `kiln serve` child with its output in a file.
struct Child {
  pid_t pid = -1;
  std::string out;
  int port = 0;
};

// The CPUs the bench may use when it starts; every replica gets them all,
// whatever the load generator's thread is bound to (--pin-load-gen).
const cpu_set_t& bench_cpus();

// `kiln serve ARGS...` with stdout and stderr in `out`.
Result<Child> spawn_serve(const std::vector<std::string>& args, const std::string& out);

// The whole of a file ("" when it cannot be read).
std::string slurp(const std::string& path);

// Waits for `pattern` in the child's output; returns its first group.
Result<std::string> wait_for(const Child& c, const std::string& pattern, double timeout_s);

// SIGTERM (a graceful drain) and reap.
void stop(Child& c);

// A replica listening: spawned, and its port read from its output.
Result<Child> start_replica(const std::vector<std::string>& args, const std::string& out);

// The replica's "ready: ..." line: its cold start's parts.
std::string ready_line(const Child& c);

}  // namespace kiln::cli::bench_serve
