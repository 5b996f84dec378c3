// The LibTorch models `kiln train` saves (kiln/train/task.h), loaded from a
// checkpoint for inference. This header does not include LibTorch.
//
// A checkpoint holds tensors, not the [model] section of the training
// config. The CNN's shape is read off its tensors (channels from conv1,
// hidden from fc1). The GPT's attention heads (and, with rotary positions,
// its context length) are not in any tensor's shape, so a GPT needs the
// training config (`--config TRAIN.toml`); a config, when given, is checked
// against the tensors.
#pragma once

#include <memory>
#include <string>

#include "kiln/base/status.h"
#include "kiln/ckpt/state.h"
#include "kiln/serve/model.h"

namespace kiln::serve {

struct TorchModelOptions {
  std::string config_path;  // the training TOML; "" = infer from the checkpoint
  int threads = 1;          // torch intra-op threads (one per replica on a small host)
};

// FailedPrecondition: a GPT without a config, or tensors of no known model;
// DataLoss: a tensor missing or shaped unlike the config's model;
// config parse errors name the file and field.
Result<std::unique_ptr<Model>> load_torch_model(const ckpt::LoadedState& state,
                                                const TorchModelOptions& options);

}  // namespace kiln::serve
