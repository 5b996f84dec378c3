// The fault-injecting Fs lives in base (kiln/base/testing/fault_fs.h); these
// names keep ckpt tests written against ckpt::testing::FaultFs working.
#pragma once

#include "kiln/base/testing/fault_fs.h"

namespace kiln::ckpt::testing {

using kiln::testing::FaultFs;
using kiln::testing::FsOp;

}  // namespace kiln::ckpt::testing
