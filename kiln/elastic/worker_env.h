// The environment a launcher (`kiln run`, `kiln launch`) gives a worker:
// the launcher's own, plus every variable torchrun sets (RANK, LOCAL_RANK,
// WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, GROUP_WORLD_SIZE, ROLE_RANK,
// ROLE_WORLD_SIZE, ROLE_NAME, MASTER_ADDR, MASTER_PORT,
// TORCHELASTIC_RESTART_COUNT, TORCHELASTIC_MAX_RESTARTS, TORCHELASTIC_RUN_ID,
// TORCHELASTIC_USE_AGENT_STORE) and Kiln's (KILN_AGENT_STORE,
// KILN_STORE_ADDR, KILN_STORE_PORT, KILN_GROUP_TAG, KILN_GENERATION,
// KILN_RESTART_COUNT, KILN_HEARTBEAT_FD). docs/elastic.md lists them.
#pragma once

#include <string>
#include <vector>

#include "kiln/elastic/worker_group.h"

namespace kiln::elastic {

// The descriptor a worker writes heartbeats to (KILN_HEARTBEAT_FD): always
// 3 (Note [The heartbeat is descriptor 3] in worker_group.cc).
inline constexpr int kWorkerHeartbeatFd = 3;

// "NAME=value" entries, ready for execve. `heartbeat_fd` < 0: the launcher
// reads no heartbeats (KILN_HEARTBEAT_FD is left unset).
std::vector<std::string> worker_environment(const WorkerGroupSpec& spec, int local_rank,
                                            int heartbeat_fd);

}  // namespace kiln::elastic
