// ServerProcess and its helpers moved to kiln/base/server_process.h (the
// `kiln bench` launchers use them too); these names keep tests written
// against kiln::testing working.
#pragma once

#include "kiln/base/server_process.h"

namespace kiln::testing {

using kiln::find_on_path;
using kiln::free_loopback_port;
using kiln::make_scratch_dir;
using kiln::ServerProcess;

}  // namespace kiln::testing
