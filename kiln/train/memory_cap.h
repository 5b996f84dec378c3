// The per-rank cap on tensor memory that a run enforces (docs/train.md,
// "Memory"): [parallel] memory_cap_mib, the headroom of the rank's memory
// cgroup ([parallel] memory_cap_from_cgroup), or the lower of the two. The
// cgroup is what the kernel enforces; the cap keeps the trainer inside it
// with an error that names a strategy that would fit, where the kernel's
// OOM killer would end the rank without a word.
#pragma once

#include <optional>
#include <string>

#include "kiln/base/cgroup_memory.h"
#include "kiln/base/status.h"
#include "kiln/train/train_config.h"

namespace kiln::train {

struct MemoryCap {
  double mib = 0;      // 0: no cap
  std::string source;  // what set it, for logs and errors
};

// `cgroup` is the rank's memory cgroup as read now, before the model is
// built (nullopt: none). FailedPrecondition when memory_cap_from_cgroup is
// set and there is no cgroup limit to derive a cap from; ResourceExhausted
// when the headroom left is not more than the reserve.
Result<MemoryCap> memory_cap(const ParallelConfig& c, const std::optional<CgroupMemory>& cgroup);

// The same, reading this process's cgroup when the config asks for it.
Result<MemoryCap> memory_cap(const ParallelConfig& c);

}  // namespace kiln::train
