// Reading and writing one element of any DataType as a double: for
// benchmarks' result checks and tests' references, not for hot paths.
#pragma once

#include <cstddef>

#include "kiln/comm/types.h"

namespace kiln::comm {

void store_element(DataType t, void* buf, std::size_t i, double v);
double load_element(DataType t, const void* buf, std::size_t i);

}  // namespace kiln::comm
