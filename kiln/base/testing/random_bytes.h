// Pseudo-random bytes for tests: the same bytes for a seed on every run and
// machine, so a failure can be replayed.
#pragma once

#include <cstddef>
#include <random>
#include <vector>

namespace kiln::testing {

inline std::vector<std::byte> random_bytes(std::size_t n, unsigned seed = 7) {
  std::vector<std::byte> v(n);
  std::mt19937 rng(seed);
  for (auto& b : v) b = static_cast<std::byte>(rng());
  return v;
}

}  // namespace kiln::testing
