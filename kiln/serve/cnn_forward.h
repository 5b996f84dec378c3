// Which forward pass a CNN replica serves with. LibTorch-free: the options
// and the knob, not the forward (blocked_cnn.h, onednn_cnn.h).
#pragma once

#include <string>

#include "kiln/base/status.h"

namespace kiln::serve {

enum class CnnForward {
  kModule,           // the trained module's forward (kiln/train/task.cc)
  kBlocked,          // BlockedCnn (blocked_cnn.h), the fully connected layers on the BLAS
  kBlockedFcOnednn,  // BlockedCnn, the fully connected layers on oneDNN too
  kOnednn,           // OnednnCnn (onednn_cnn.h): oneDNN's own API, a plan per batch size
};

// "module", "blocked", "blocked-fc-onednn", "onednn"; InvalidArgument otherwise.
Result<CnnForward> cnn_forward_named(const std::string& name);
const char* cnn_forward_name(CnnForward f);

// The knob KILN_SERVE_CNN_FORWARD, by default `onednn`, the fastest forward
// at every batch size in docs/perf.md's A/Bs (issue 20, session 16: 2.3x the
// module's unbatched throughput, 1.19x its batched). `module` batches "better"
// only because its batch-1 path is slow, which no user wants served; a
// malformed value is logged and gives the default.
CnnForward default_cnn_forward();

}  // namespace kiln::serve
