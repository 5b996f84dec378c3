#include "kiln/train/memory_cap.h"

#include <fmt/format.h>

#include <algorithm>

namespace kiln::train {
namespace {

constexpr double kMiB = 1 << 20;

// Note [The reserve grows with the model]: what a rank holds beyond its live
// tensors is mostly freed blocks the C allocator keeps for reuse, so it grows
// with the tensors' sizes: 14-20 MiB beside 95 MiB of tensors, 50-75 MiB
// beside 833 MiB (docs/perf.md, issue 17). A tenth of the headroom covers
// both with room; 32 MiB is the floor for small runs' fixed costs.
constexpr double kReserveFraction = 0.10;
constexpr double kMinReserveMiB = 32;

}  // namespace

Result<MemoryCap> memory_cap(const ParallelConfig& c, const std::optional<CgroupMemory>& cgroup) {
  MemoryCap configured{c.memory_cap_mib, "parallel.memory_cap_mib"};
  if (!c.memory_cap_from_cgroup) return configured;
  if (!cgroup) {
    return failed_precondition(
        "parallel.memory_cap_from_cgroup = true, but this rank is in no memory cgroup "
        "(/proc/self/cgroup names no memory controller that /proc/self/mountinfo mounts)");
  }
  if (!cgroup->limit_bytes) {
    return failed_precondition(fmt::format(
        "parallel.memory_cap_from_cgroup = true, but memory cgroup {} has no limit (cgroup v{}): "
        "set one (memory.max, memory.limit_in_bytes) or use parallel.memory_cap_mib",
        cgroup->dir, cgroup->version));
  }
  const double limit = static_cast<double>(*cgroup->limit_bytes) / kMiB;
  const double in_use = static_cast<double>(cgroup->usage_bytes) / kMiB;
  const double reserve = c.memory_cgroup_reserve_mib >= 0
                            ? c.memory_cgroup_reserve_mib
                            : std::max(kMinReserveMiB, kReserveFraction * (limit - in_use));
  const double headroom = limit - in_use - reserve;
  if (headroom <= 0) {
    return resource_exhausted(fmt::format(
        "out of memory before the model is built: memory cgroup {} has a limit of {:.1f} MiB and "
        "{:.1f} MiB in use, which leaves nothing beyond the {:.1f} MiB reserve "
        "(parallel.memory_cgroup_reserve_mib)",
        cgroup->dir, limit, in_use, reserve));
  }
  MemoryCap from_cgroup{
      headroom, fmt::format("memory cgroup {}: limit {:.1f} MiB - {:.1f} MiB in use before the "
                            "model - {:.1f} MiB reserve",
                            cgroup->dir, limit, in_use, reserve)};
  if (configured.mib > 0 && configured.mib <= from_cgroup.mib) return configured;
  return from_cgroup;
}

Result<MemoryCap> memory_cap(const ParallelConfig& c) {
  if (!c.memory_cap_from_cgroup) return memory_cap(c, std::nullopt);
  KILN_ASSIGN_OR_RETURN(std::optional<CgroupMemory> cgroup, own_cgroup_memory());
  return memory_cap(c, cgroup);
}

}  // namespace kiln::train
