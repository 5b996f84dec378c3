// StepRecord <-> one JSON object, the "step" line of metrics.jsonl
// (docs/diag.md lists the fields).
#pragma once

#include <nlohmann/json.hpp>

#include "kiln/base/status.h"
#include "kiln/diag/step_timer.h"

namespace kiln::diag {

// {"type":"step","step":..,"rank":..,"t":..,"loss":..,"samples":..,"step_s":..,
//  "data_wait":..,...,"other":..,"comm_bytes":..,"comm_s":..,"cache_hit_rate":..,
//  "mesh":{"dp":..,"pp":..,"tp":..} (3D runs), "collectives_in_backward":.. (when known)}
// Spans are not written (they go to the trace).
nlohmann::json step_to_json(const StepRecord &r);

// The inverse; InvalidArgument naming the missing or mistyped field.
Result<StepRecord> step_from_json(const nlohmann::json &j);

}  // namespace kiln::diag
