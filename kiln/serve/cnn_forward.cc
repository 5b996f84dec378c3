#include "kiln/serve/cnn_forward.h"

#include <fmt/format.h>

#include "kiln/base/knobs.h"
#include "kiln/base/logging.h"

namespace kiln::serve {
namespace {

const Knob<std::string> kCnnForward{
    "KILN_SERVE_CNN_FORWARD", "onednn",
    "the CNN replica's forward pass: blocked (activations in oneDNN's layout, Note [The CNN's "
    "forward in oneDNN's layout]), blocked-fc-onednn (and the fully connected layers on oneDNN), "
    "onednn (oneDNN's own API, a plan of fused primitives per batch size, Note [The CNN's "
    "forward on oneDNN's own API]), or module (the trained module's own forward)"};

}  // namespace

Result<CnnForward> cnn_forward_named(const std::string& name) {
  for (CnnForward f : {CnnForward::kModule, CnnForward::kBlocked, CnnForward::kBlockedFcOnednn,
                       CnnForward::kOnednn}) {
    if (name == cnn_forward_name(f)) return f;
  }
  return invalid_argument(
      fmt::format("unknown CNN forward '{}': module, blocked, blocked-fc-onednn or onednn", name));
}

const char* cnn_forward_name(CnnForward f) {
  switch (f) {
    case CnnForward::kModule: return "module";
    case CnnForward::kBlocked: return "blocked";
    case CnnForward::kBlockedFcOnednn: return "blocked-fc-onednn";
    case CnnForward::kOnednn: return "onednn";
  }
  return "?";
}

CnnForward default_cnn_forward() {
  auto f = cnn_forward_named(kCnnForward.get());
  if (f.is_ok()) return *f;
  log()->warn("{}: {}; serving with '{}'", kCnnForward.name(), f.status().to_string(),
              kCnnForward.default_value());
  return *cnn_forward_named(kCnnForward.default_value());
}

}  // namespace kiln::serve
