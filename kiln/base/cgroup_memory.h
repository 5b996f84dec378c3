// The memory cgroup this process runs in, and its limit: what a container
// runtime (memory.max), Slurm's ConstrainRAMSpace or a test puts around a
// rank. The trainer derives its per-rank tensor cap from it
// ([parallel] memory_cap_from_cgroup, docs/train.md) so that a strategy whose
// state cannot fit fails at once naming one that would, instead of being
// killed by the kernel part-way through a step.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "kiln/base/status.h"

namespace kiln {

// Where a process's memory cgroup lives in its hierarchy.
struct CgroupPlace {
  int version = 0;   // 1: the v1 "memory" controller; 2: the unified hierarchy
  std::string path;  // as /proc/self/cgroup lists it, e.g. "/job_17/step_0"
};

struct CgroupMemory {
  int version = 0;
  std::string dir;                           // the cgroup's directory under its mount
  std::optional<std::uint64_t> limit_bytes;  // nullopt: unlimited
  std::uint64_t usage_bytes = 0;             // charged now (anonymous memory, page cache, shm)
  std::optional<std::uint64_t> peak_bytes;   // v1 max_usage_in_bytes, v2 memory.peak (Linux 5.19+)
};

// The memory cgroup named in /proc/self/cgroup's text: the v1 line whose
// controllers include "memory" when there is one (v1 and v2 mounted side by
// side leave memory with v1), otherwise the unified "0::" line.
std::optional<CgroupPlace> memory_cgroup_of(std::string_view proc_self_cgroup);

// Where `place` is on this host, from /proc/self/mountinfo's text: a
// "cgroup" mount whose options include "memory" (v1) or a "cgroup2" mount
// (v2). A mount of a sub-tree (a container's view, whose root field is not
// "/") is accounted for. nullopt when no such mount holds the path.
struct CgroupDir {
  std::string mount_point;  // the hierarchy's top as this process sees it
  std::string dir;          // the cgroup's directory, at or below mount_point
};
std::optional<CgroupDir> cgroup_dir(std::string_view mountinfo, const CgroupPlace& place);

// The cgroup's limit and usage, read from `dir`'s files. InvalidArgument
// names a file whose contents do not parse; NotFound a missing one.
Result<CgroupMemory> read_cgroup_memory(int version, const std::string& dir);

// This process's memory cgroup; nullopt where no memory controller is
// mounted (a bare chroot, a kernel without memcg).
Result<std::optional<CgroupMemory>> own_cgroup_memory();

}  // namespace kiln
