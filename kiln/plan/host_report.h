// Renderings of a CPU-host prediction (host_step_time.h): a readable report
// and one JSON document. Pure functions; no I/O.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "kiln/plan/config.h"
#include "kiln/plan/host_step_time.h"

namespace kiln::plan {

std::string format_host_plan(const PlanConfig& config, const HostStepTime& step);

// Top-level keys: step_time_s, tokens_per_s, breakdown {compute_s,
// tp_comm_s, pp_comm_s, pp_bubble_s, dp_comm_s, optimizer_s} (they add up to
// step_time_s), bubble {formula, simulated}, host {profile, cores,
// ranks_per_host, threads_per_rank, oversubscription}, layout, layer, stages.
nlohmann::json host_plan_to_json(const PlanConfig& config, const HostStepTime& step);

}  // namespace kiln::plan
