#include "kiln/train/ddp_sync_record.h"

namespace kiln::train {

void add_ddp_sync(const ddp::SyncStats& sync, diag::StepRecord& r) {
  if (r.collectives_in_backward < 0) r.collectives_in_backward = 0;
  r.comm_s += sync.sync_s;
  for (const ddp::CollectiveStat& c : sync.collectives) {
    r.collectives.push_back({c.bytes, c.seconds});
    if (c.launched_s < sync.backward_s) ++r.collectives_in_backward;
  }
}

}  // namespace kiln::train
