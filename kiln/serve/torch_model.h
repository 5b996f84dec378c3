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

// Note [Keep freed tensor memory]: glibc's malloc hands blocks above its
// mmap threshold (and a heap top above its trim threshold) back to the
// kernel when they are freed, so every forward pass of a batch whose
// activations pass about 1 MB (the CNN at batch >= 4..12, depending on the
// adaptive threshold) maps fresh pages and takes a page fault per 4 KiB:
// measured on the 2-core VM, 0.8-1.1 ms per image instead of 0.21 ms
// (docs/perf.md, issue 20). A serving process allocates the same sizes batch
// after batch, so it keeps what it freed: mmap only above 32 MiB (glibc's
// largest threshold), trim only above 1 GiB. Process-wide; call once before the first forward pass.
void keep_freed_tensor_memory();

}  // namespace kiln::serve
