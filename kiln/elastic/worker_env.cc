#include "kiln/elastic/worker_env.h"

#include <fmt/format.h>

#include <map>

extern char** environ;

namespace kiln::elastic {

std::vector<std::string> worker_environment(const WorkerGroupSpec& spec, int local_rank,
                                            int heartbeat_fd) {
  std::map<std::string, std::string> vars;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry(*e);
    auto eq = entry.find('=');
    if (eq != std::string::npos) vars[entry.substr(0, eq)] = entry.substr(eq + 1);
  }
  const int world = spec.num_nodes * spec.nproc_per_node;
  const int rank = spec.group_rank * spec.nproc_per_node + local_rank;
  // Every earlier round (failures, scale-ups, preemptions) vs. only the
  // restarts after failures (torchrun's count, restart_budget.h).
  const std::int64_t rounds_before = spec.generation - 1;
  auto set = [&](const char* name, auto value) { vars[name] = fmt::format("{}", value); };
  set("RANK", rank);
  set("LOCAL_RANK", local_rank);
  set("WORLD_SIZE", world);
  set("LOCAL_WORLD_SIZE", spec.nproc_per_node);
  set("GROUP_RANK", spec.group_rank);
  set("GROUP_WORLD_SIZE", spec.num_nodes);
  set("ROLE_RANK", rank);
  set("ROLE_WORLD_SIZE", world);
  set("ROLE_NAME", "default");
  // The script's own store (Note [The script's MASTER_PORT]): rank 0 hosts
  // it, as under torchrun, so an inherited "True" must not leak through.
  set("MASTER_ADDR", spec.master_addr);
  set("MASTER_PORT", spec.master_port);
  set("TORCHELASTIC_USE_AGENT_STORE", "False");
  set("TORCHELASTIC_RESTART_COUNT", spec.restart_count);
  set("TORCHELASTIC_MAX_RESTARTS", spec.max_restarts);
  set("TORCHELASTIC_RUN_ID", spec.run_id);
  // The launcher serves Kiln's store; each round's workers get their own keys.
  set("KILN_AGENT_STORE", 1);
  set("KILN_STORE_ADDR", spec.store_addr);
  set("KILN_STORE_PORT", spec.store_port);
  set("KILN_GROUP_TAG", fmt::format("{}/g{}", spec.run_id, spec.generation));
  set("KILN_GENERATION", spec.generation);
  set("KILN_RESTART_COUNT", rounds_before);
  if (heartbeat_fd >= 0) {
    set("KILN_HEARTBEAT_FD", heartbeat_fd);
  } else {
    vars.erase("KILN_HEARTBEAT_FD");  // a launcher above this one reads it, not the worker's
  }
  for (const auto& [k, v] : spec.extra_env) vars[k] = v;
  std::vector<std::string> out;
  out.reserve(vars.size());
  for (const auto& [k, v] : vars) out.push_back(k + "=" + v);
  return out;
}

}  // namespace kiln::elastic
