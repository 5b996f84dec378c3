// Test support: deterministic checkpoint states and scratch directories.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/base/testing/temp_dir.h"
#include "kiln/ckpt/state.h"

namespace kiln::ckpt::testing {

using kiln::testing::TempDir;

// Value of element (row, col) of tensor `which` at `step`: every bit depends
// on all four, so a misplaced row or a stale step shows.
float test_value(int which, std::int64_t step, std::int64_t row, std::int64_t col);

// This rank's part of a test state at `step`: tensors "w0" [rows0 x 7] and
// "w1" [rows1 x 3] sharded with even_rows, a replicated "bias" [5], and blobs
// "rng" (per rank) and "step". Owns its memory.
struct TestState {
  TestState(std::int64_t step, int rank, int world, std::int64_t rows0 = 37,
            std::int64_t rows1 = 10);
  StateView view() const;

  std::int64_t step, rows0, rows1;
  int rank, world;
  std::vector<float> w0, w1, bias;
  std::string rng;
};

// Checks a loaded state against TestState(step, rank, world) re-sliced for
// `rank` of `world`, and the blobs against saved rank `rank % saved_world`.
// Returns "" when it matches bit for bit, else what differs.
std::string check_loaded(const LoadedState& s, std::int64_t step, int rank, int world,
                         std::int64_t rows0 = 37, std::int64_t rows1 = 10);

// `total` rows of 3 floats for the gather tests; row i of tensor `salt` is
// {i + salt, i + 0.5, -i}.
std::vector<float> whole_rows(std::int64_t total, float salt);

}  // namespace kiln::ckpt::testing
