// The environment `kiln run` gives a worker: the agent's own, plus the
// torchrun variables (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
// GROUP_RANK, GROUP_WORLD_SIZE, MASTER_ADDR, MASTER_PORT,
// TORCHELASTIC_RESTART_COUNT, TORCHELASTIC_MAX_RESTARTS,
// TORCHELASTIC_RUN_ID) and Kiln's (KILN_AGENT_STORE, KILN_GROUP_TAG,
// KILN_GENERATION, KILN_HEARTBEAT_FD). docs/elastic.md lists them.
#pragma once

#include <string>
#include <vector>

#include "kiln/elastic/worker_group.h"

namespace kiln::elastic {

// The descriptor a worker writes heartbeats to (KILN_HEARTBEAT_FD): always
// 3 (Note [The heartbeat is descriptor 3] in worker_group.cc).
inline constexpr int kWorkerHeartbeatFd = 3;

// "NAME=value" entries, ready for execve.
std::vector<std::string> worker_environment(const WorkerGroupSpec& spec, int local_rank,
                                            int heartbeat_fd);

}  // namespace kiln::elastic
