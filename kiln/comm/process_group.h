// Forming the world from the launcher's environment (torchrun-compatible).
//
// RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (and LOCAL_RANK,
// LOCAL_WORLD_SIZE, informational) name this process's place. Rank 0 serves
// the TcpStore on MASTER_PORT unless KILN_AGENT_STORE=1 says a launcher
// already serves it, at KILN_STORE_ADDR:KILN_STORE_PORT (MASTER_* are then
// the script's; `kiln launch` and `kiln run` set both). A task of a Slurm
// step without RANK takes its place from the step (kiln/base/slurm.h). KILN_COMM_TIMEOUT (seconds) bounds every operation and
// the rendezvous itself.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "kiln/base/status.h"
#include "kiln/comm/communicator.h"
#include "kiln/store/store.h"

namespace kiln::store::tcp {
class TcpStoreServer;
}

namespace kiln::comm {

struct WorldSpec {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool agent_store = false;  // a launcher serves the store
  // KILN_JOB_TOKEN: proven on every store and tcp connection; empty when the
  // job runs without a launcher (then nothing is authenticated).
  std::string job_token;
};

// Reads the spec from the environment; InvalidArgument names a missing or
// malformed variable.
Result<WorldSpec> world_spec_from_env();

// Whether a launcher placed this process in a world: RANK is set, or it is
// a task of a Slurm step.
bool launched_in_world();

// A formed world: the store (and its server on rank 0) plus the communicator.
class ProcessGroup {
 public:
  static Result<std::unique_ptr<ProcessGroup>> create(const WorldSpec& spec, CommOptions options = {});
  static Result<std::unique_ptr<ProcessGroup>> from_env(CommOptions options = {});
  ~ProcessGroup();

  Communicator& comm() { return *comm_; }
  std::shared_ptr<store::Store> store() { return store_; }
  const WorldSpec& spec() const { return spec_; }

 private:
  ProcessGroup() = default;
  WorldSpec spec_;
  std::unique_ptr<store::tcp::TcpStoreServer> server_;
  std::shared_ptr<store::Store> store_;
  std::unique_ptr<Communicator> comm_;
};

}  // namespace kiln::comm
