// Renderings of plans, searches and validations: a readable text report, one
// JSON document (nlohmann-json), and an SVG of the step-time and memory
// breakdowns. Pure functions of their inputs; no I/O.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "kiln/plan/fit.h"
#include "kiln/plan/plan.h"
#include "kiln/plan/search.h"
#include "kiln/plan/validate.h"

namespace kiln::plan {

std::string format_plan(const Plan& plan);
// Keys include step_time_s, mfu, memory_per_gpu_bytes, bottleneck and
// checkpoint_interval_s (Daly's optimum), all at top level.
nlohmann::json plan_to_json(const Plan& plan);

std::string format_search(const SearchResult& result, const PlanConfig& base);
nlohmann::json search_to_json(const SearchResult& result);

std::string format_validation(const ValidationReport& report);
// {"rows": [{"name", "predicted_step_time_s", "measured_step_time_s", "error"}...],
//  "median_abs_error", "max_abs_error"}; absent values are null, and a row
// that could not be predicted carries "problem".
nlohmann::json validation_to_json(const ValidationReport& report);

// Per run: the held-out prediction and its error; per class and overall:
// median and worst |error|; per fold: the constants fitted without it.
std::string format_loso(const LosoReport& report);
// {"rows": [{"name", "source_id", "class", "predicted_step_time_s",
//  "measured_step_time_s", "error"}...], "folds": [{"source_id", "runs",
//  "constants": {name: value}}...], "median_abs_error", "max_abs_error"}
nlohmann::json loso_to_json(const LosoReport& report);
// name = value, one per fitted constant.
std::string format_constants(const EfficiencyModel& e);

// Two stacked horizontal bars (step time, memory per GPU) with a legend.
std::string render_svg(const Plan& plan);

}  // namespace kiln::plan
