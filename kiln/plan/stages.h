// How a model's layers are split over pipeline stages.
//
// Real runs do not need pp (× vpp) to divide the layer count: Llama 3 405B
// puts 126 layers on 16 stages and BLOOM 70 on 12 by giving the first and the
// last stage one layer fewer, since those stages also hold the embedding and
// the output head (Dubey et al. 2024 §3.3.2; BigScience's Megatron-DeepSpeed
// partition "type:transformer|embedding"). A layout either lists the layers
// of every stage (layout.stage_layers) or leaves the split to stage_layers():
// even when pp divides the layers, otherwise the deficit is taken from the
// outermost stages inwards, last stage first (it also runs the loss).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/base/status.h"
#include "kiln/plan/config.h"

namespace kiln::plan {

// Layers of each physical pipeline stage (size pp; sums to model.layers).
// Assumes check_stage_layers() passed.
std::vector<std::int64_t> stage_layers(const PlanConfig& config);

// The automatic split of `layers` over `pp` stages described above.
std::vector<std::int64_t> balanced_stage_layers(std::int64_t layers, std::int64_t pp);

// True when the stages do not all hold the same number of layers.
bool stages_are_uneven(const std::vector<std::int64_t>& stages);

// InvalidArgument (naming `where`) unless explicit stage layers have pp
// entries, each >= vpp (a device holds vpp model chunks of at least one
// layer), summing to model.layers; for the automatic split, unless every
// stage gets at least vpp layers.
Status check_stage_layers(const PlanConfig& config, const std::string& where);

// "7 8 8 ... 7" <-> {7, 8, 8, ..., 7}; also accepts commas or semicolons.
Result<std::vector<std::int64_t>> parse_stage_layers(const std::string& text);
std::string format_stage_layers(const std::vector<std::int64_t>& stages);

}  // namespace kiln::plan
