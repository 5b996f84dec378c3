// A DDP step's gradient sync in its step record (docs/diag.md): each
// bucket's collective, the time the sync took, and how many buckets were
// issued while the backward that produced them still ran (the overlap the
// diagnosis reads). The 1D and the 3D trainer record it the same way.
#pragma once

#include "kiln/ddp/distributed_data_parallel.h"
#include "kiln/diag/step_timer.h"

namespace kiln::train {

// Adds `sync` to `r`; a 3D rank with several model chunks calls it once per
// chunk and the counts add up.
void add_ddp_sync(const ddp::SyncStats& sync, diag::StepRecord& r);

}  // namespace kiln::train
