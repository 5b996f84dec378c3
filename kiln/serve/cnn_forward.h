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

// The knob KILN_SERVE_CNN_FORWARD, by default the forward docs/perf.md's
// A/Bs chose (issue 20, sessions 15 and 16: `module`, the one whose
// batching gains most; `onednn` is the fastest at every batch size); a
// malformed value is logged and gives the default.
CnnForward default_cnn_forward();

}  // namespace kiln::serve
