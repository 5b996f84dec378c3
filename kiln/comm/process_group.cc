#include "kiln/comm/process_group.h"

#include <charconv>
#include <cstdlib>

#include <fmt/format.h>

#include "kiln/base/auth/job_token.h"
#include "kiln/base/knobs.h"
#include "kiln/base/logging.h"
#include "kiln/base/slurm.h"
#include "kiln/store/tcp/client.h"
#include "kiln/store/tcp/server.h"

namespace kiln::comm {
namespace {

const Knob<std::string> kGroupTag{"KILN_GROUP_TAG", "world",
                                  "names this group's keys in the store (launchers set one per run)"};
const Knob<bool> kAgentStore{"KILN_AGENT_STORE", false,
                             "1 when the launcher serves the store at KILN_STORE_ADDR:KILN_STORE_PORT "
                             "(rank 0 serves none)"};

Result<int> env_int(const char* name, std::optional<int> fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') {
    if (fallback) return *fallback;
    return invalid_argument(fmt::format(
        "environment variable {} is not set (run under `kiln launch`, `kiln run` or `srun`, or "
        "set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT)", name));
  }
  int out = 0;
  std::string_view s(v);
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  if (ec != std::errc() || p != s.data() + s.size()) {
    return invalid_argument(fmt::format("environment variable {}={:?} is not an integer", name, s));
  }
  return out;
}

}  // namespace

namespace {

// A task of `srun -n N kiln train ...`: no launcher set RANK, so the step
// says where this task stands; task 0 serves the store on the step's first
// node, at MASTER_PORT if set, else at a port derived from the job and step.
Result<std::optional<WorldSpec>> world_spec_from_slurm() {
  const char* rank = std::getenv("RANK");
  if (rank != nullptr && *rank != '\0') return std::optional<WorldSpec>();
  KILN_ASSIGN_OR_RETURN(auto step, slurm_step_from_env());
  if (!step) return std::optional<WorldSpec>();
  WorldSpec s;
  s.rank = step->procid;
  s.world_size = step->ntasks;
  s.local_rank = step->localid;
  s.local_world_size = step->local_ntasks;
  const char* addr = std::getenv("MASTER_ADDR");
  s.master_addr = addr != nullptr && *addr != '\0' ? addr : step->first_host;
  KILN_ASSIGN_OR_RETURN(s.master_port, env_int("MASTER_PORT", step->derived_port()));
  log()->debug("Slurm step {}.{}: rank {}/{}, store at {}:{}", step->job_id, step->step_id,
               s.rank, s.world_size, s.master_addr, s.master_port);
  return std::optional<WorldSpec>(std::move(s));
}

}  // namespace

Result<WorldSpec> world_spec_from_env() {
  KILN_ASSIGN_OR_RETURN(auto from_slurm, world_spec_from_slurm());
  if (from_slurm) return *from_slurm;
  WorldSpec s;
  KILN_ASSIGN_OR_RETURN(s.rank, env_int("RANK", std::nullopt));
  KILN_ASSIGN_OR_RETURN(s.world_size, env_int("WORLD_SIZE", std::nullopt));
  KILN_ASSIGN_OR_RETURN(s.local_rank, env_int("LOCAL_RANK", s.rank));
  KILN_ASSIGN_OR_RETURN(s.local_world_size, env_int("LOCAL_WORLD_SIZE", s.world_size));
  KILN_ASSIGN_OR_RETURN(s.master_port, env_int("MASTER_PORT", 29500));
  const char* addr = std::getenv("MASTER_ADDR");
  if (addr != nullptr && *addr != '\0') s.master_addr = addr;
  s.agent_store = kAgentStore.get();
  if (s.agent_store) {
    // The launcher's store has its own port; MASTER_PORT is left to the
    // script's own store (Note [The script's MASTER_PORT], kiln/elastic).
    KILN_ASSIGN_OR_RETURN(s.master_port, env_int("KILN_STORE_PORT", s.master_port));
    const char* store_addr = std::getenv("KILN_STORE_ADDR");
    if (store_addr != nullptr && *store_addr != '\0') s.master_addr = store_addr;
  }
  KILN_ASSIGN_OR_RETURN(s.job_token, auth::token_from_env());
  if (s.world_size < 1 || s.rank < 0 || s.rank >= s.world_size) {
    return invalid_argument(fmt::format("RANK={} is outside WORLD_SIZE={}", s.rank, s.world_size));
  }
  if (s.master_port <= 0 || s.master_port > 65535) {
    return invalid_argument(fmt::format("{}={} is not a port",
                                        s.agent_store ? "KILN_STORE_PORT" : "MASTER_PORT",
                                        s.master_port));
  }
  return s;
}

bool launched_in_world() {
  const char* rank = std::getenv("RANK");
  if (rank != nullptr && *rank != '\0') return true;
  auto step = slurm_step_from_env();
  return !step.is_ok() || step->has_value();  // a malformed step: from_env() says why
}

Result<std::unique_ptr<ProcessGroup>> ProcessGroup::from_env(CommOptions options) {
  KILN_ASSIGN_OR_RETURN(WorldSpec spec, world_spec_from_env());
  return create(spec, std::move(options));
}

Result<std::unique_ptr<ProcessGroup>> ProcessGroup::create(const WorldSpec& spec, CommOptions options) {
  std::unique_ptr<ProcessGroup> pg(new ProcessGroup());
  pg->spec_ = spec;
  set_log_rank(spec.rank);
  auto timeout = options.timeout.count() > 0 ? options.timeout : default_op_timeout();
  if (spec.rank == 0 && !spec.agent_store) {
    // MASTER_ADDR is where the other ranks reach rank 0: listen there only.
    pg->server_ = std::make_unique<store::tcp::TcpStoreServer>(
        store::tcp::TcpStoreServerOptions{.token = spec.job_token});
    Status s = pg->server_->start(spec.master_addr, static_cast<std::uint16_t>(spec.master_port));
    if (!s.is_ok()) {
      return s.with_context(fmt::format("rank 0 serving the store on {}:{} (MASTER_ADDR must be "
                                        "an address of rank 0's host)",
                                        spec.master_addr, spec.master_port));
    }
    if (spec.job_token.empty() && spec.master_addr != "127.0.0.1" &&
        spec.master_addr != "localhost") {
      log()->warn("rank 0 serves the store on {}:{} without a job token: anyone who can reach "
                  "it can join (set KILN_JOB_TOKEN, or start the job with `kiln run`)",
                  spec.master_addr, spec.master_port);
    }
  }
  store::tcp::TcpStoreOptions store_options;
  store_options.token = spec.job_token;
  store_options.connect_timeout = timeout;
  store_options.default_timeout = timeout;
  auto store = store::tcp::TcpStore::connect(spec.master_addr,
                                             static_cast<std::uint16_t>(spec.master_port), store_options);
  if (!store.is_ok()) {
    return store.status().with_context(fmt::format("rank {} joining the world", spec.rank));
  }
  pg->store_ = std::shared_ptr<store::Store>(std::move(*store));
  if (options.connect.route_hint.empty()) options.connect.route_hint = spec.master_addr;
  if (options.connect.tag.empty()) options.connect.tag = kGroupTag.get();
  if (options.connect.token.empty()) options.connect.token = spec.job_token;
  KILN_ASSIGN_OR_RETURN(pg->comm_, Communicator::create(pg->store_, spec.rank, spec.world_size, options));
  return pg;
}

ProcessGroup::~ProcessGroup() {
  // Rank 0 hosts the store: every rank finishes with it before it goes.
  if (comm_) {
    Status s = comm_->barrier()->wait();
    if (!s.is_ok()) log()->debug("shutdown barrier: {}", s.to_string());
  }
  comm_.reset();
  store_.reset();
  server_.reset();
}

}  // namespace kiln::comm
