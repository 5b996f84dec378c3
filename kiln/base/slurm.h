// A Slurm job step as this task sees it: what `srun` sets (SLURM_PROCID,
// SLURM_NTASKS, SLURM_LOCALID, SLURM_NODEID, SLURM_STEP_NODELIST,
// SLURM_JOB_NODELIST, SLURM_JOB_ID, SLURM_STEP_ID), turned into the rank,
// world size, local rank and rendezvous host that torchrun users otherwise
// set by hand. `kiln launch`, `kiln run` and Kiln's workers read it where
// no launcher set RANK (docs/elastic.md, "Under Slurm").
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "kiln/base/status.h"

namespace kiln {

struct SlurmStep {
  int procid = 0;  // the task's rank in the step
  int ntasks = 1;
  int localid = 0;  // the task's rank on its node
  int local_ntasks = 1;
  int nodeid = 0;  // the node's index in the step
  int nnodes = 1;
  std::string first_host;  // the step's first node: where task 0 runs
  std::string job_id;
  std::string step_id;

  // A rendezvous port both sides derive from the job and step ids alone, in
  // 10000-29999 (below Linux's ephemeral ports); `offset` tells two apart.
  int derived_port(int offset = 0) const;
};

// The step this process is a task of; nullopt outside one (no SLURM_PROCID,
// or SLURM_STEP_ID unset: inside `sbatch` but not `srun`). InvalidArgument
// names a malformed variable.
Result<std::optional<SlurmStep>> slurm_step_from_env();

// The first host of a Slurm hostlist: "node[03-05,7],gpu1" -> "node03",
// "rack[1-2]-n[4-5]" -> "rack1-n4". InvalidArgument for an empty list or
// unbalanced brackets.
Result<std::string> first_slurm_host(std::string_view nodelist);

}  // namespace kiln
