// Test support for kiln train's loop: runs `world` real ranks (fork) of
// run_training on one config; rank 0's result (start step, digest, final
// evaluation loss, every
// parameter of the whole model) comes back through `out_file`, and a failed
// rank's Status through `out_file`.err.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kiln/base/status.h"
#include "kiln/train/trainer.h"

namespace kiln::train::testing {

Result<TrainResult> train_on(int world, const TrainConfig& config, const std::string& out_file,
                             std::int64_t crash_after_step = -1, const DiagOptions& diag = {});

// The step records (type "step") `rank` wrote to its metrics.jsonl under a
// run's --trace-dir, in order; none when it wrote no such file.
std::vector<nlohmann::json> step_records(const std::string& trace_dir, int rank);

// max |a - b| / max(|a|, |b|, 1e-3) over the elements.
double max_relative_difference(const std::vector<float>& a, const std::vector<float>& b);

}  // namespace kiln::train::testing
