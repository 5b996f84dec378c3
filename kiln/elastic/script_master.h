// The MASTER_ADDR:MASTER_PORT a worker script's rank 0 may host its own
// store on (a stock PyTorch script's TCPStore, env:// rendezvous).
//
// Note [The script's MASTER_PORT]: a stock PyTorch script calling
// `init_process_group("gloo")` has rank 0 bind a TCPStore on MASTER_PORT
// and every rank connect to MASTER_ADDR:MASTER_PORT, as under torchrun
// (TORCHELASTIC_USE_AGENT_STORE=False). So MASTER_PORT must be a port left
// free on the node of global rank 0, never the port Kiln's own store
// listens on; Kiln's workers find that store through KILN_STORE_ADDR and
// KILN_STORE_PORT instead. Like torchrun's agent, the leader of each round
// binds port 0, notes the port the kernel picked and closes it; a fresh
// port per round keeps a restarted group from meeting a dying one's store.
#pragma once

#include <cstdint>
#include <string>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"
#include "kiln/store/store.h"

namespace kiln::elastic {

struct HostPort {
  std::string host;
  int port = 0;
};

// A TCP port that nothing on this host listens on right now (bound on every
// IPv4 address, then released). Unavailable if no socket can be bound.
Result<int> free_tcp_port();

// Agrees on the script's master for one round. The leader (group rank 0)
// picks a free port, publishes "HOST:PORT" under `key` and returns it; the
// others read `key`, waiting until `deadline` (DeadlineExceeded: the leader
// is gone; DataLoss: the value is not HOST:PORT, naming key and value).
Result<HostPort> agree_script_master(store::Store& store, const std::string& key, bool leader,
                                     const std::string& leader_host, Deadline deadline);

}  // namespace kiln::elastic
