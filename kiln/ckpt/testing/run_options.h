// The bound the ckpt tests give their multi-process runs
// (comm/testing/multiprocess.h): generous for two cores shared by up to four
// ranks, short enough that a hang fails the test rather than ctest's timeout.
#pragma once

#include <chrono>

#include "kiln/comm/testing/multiprocess.h"

namespace kiln::ckpt::testing {

inline comm::testing::RunOptions quick(std::chrono::seconds deadline = std::chrono::seconds(30)) {
  comm::testing::RunOptions o;
  o.deadline = deadline;
  return o;
}

}  // namespace kiln::ckpt::testing
