// Real servers (etcd, s3rver) run as child processes on
// loopback: finding the binary, a free port, a scratch directory, and the
// child itself.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/base/status.h"

namespace kiln {

// The path of executable `name` in a $PATH directory, or "".
std::string find_on_path(const std::string& name);

// A TCP port free on 127.0.0.1 just now. The probe socket closes at once and
// the server binds the port moments later; another process may take it in
// between, so callers retry a failed start on a fresh port.
Result<std::uint16_t> free_loopback_port();

// A fresh directory "<parent>/<prefix>XXXXXX": on /dev/shm where it is
// writable (servers that fsync every write then run at memory speed), else
// $TMPDIR or /tmp. The caller removes it.
Result<std::string> make_scratch_dir(const std::string& prefix);

// One server child: stdout and stderr appended to a log file, stdin from
// /dev/null, SIGKILLed if the thread that spawned it exits (so spawn it from
// the test's main thread). The destructor SIGKILLs and reaps it.
class ServerProcess {
 public:
  // `name` labels errors ("etcd", "s3rver").
  ServerProcess(std::string name, std::string log_path);
  ~ServerProcess() { kill(); }
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;

  // argv[0] is the executable's path. `env` entries ("K=V") replace the
  // inherited variables of the same name or are added.
  Status spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env = {});
  // Unavailable, with the exit status and the log's tail, once the child
  // has exited (it is reaped); OK while it runs.
  Status check_running();
  // SIGKILL, as in a crash, and reap. No-op when not running.
  void kill();
  bool running() const { return pid_ > 0; }
  // The last `bytes` of the log (for failure messages).
  std::string log_tail(std::size_t bytes = 2000) const;

 private:
  const std::string name_;
  const std::string log_path_;
  pid_t pid_ = -1;
};

}  // namespace kiln
