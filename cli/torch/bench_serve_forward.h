// `kiln bench serve --parts forward`: the served CNN's forward pass taken
// apart, op by op, per batch size, beside this core's FMA peak (Note [Where
// a batched forward's time goes]).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "kiln/base/status.h"

namespace kiln::cli {

// The CNN checkpoint under `model_root`, on one thread as a replica runs it
// (torch's and the BLAS's threads capped at 1, freed heap memory kept).
// Keys: "fma_peak_gflops" (one core, 0 without AVX2+FMA), "mflop_per_image",
// "batches" [sizes], "per_batch" {batch: {op: µs per image, ...; each served
// forward's "<key>_first_ms" (its first call at that size, ms) and
// "<key>_alternating" (the forwards timed in one alternating loop)}},
// "conv2_gflops" {batch: ...}, "load_ms" {forward: ms to load the model with it}.
Result<nlohmann::json> forward_ops(const std::string& model_root);

// The table forward_ops' result makes, for people.
void print_forward_ops(const nlohmann::json& ops);

}  // namespace kiln::cli
