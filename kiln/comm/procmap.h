// One mapping of this process as the kernel describes it, asked with
// PROCMAP_QUERY on /proc/self/maps (Linux 6.11): one ioctl per question, no
// text to parse, and nothing allocated (the caller may be inside the
// allocator's madvise). Memory shared in place (shared_in_place.h) checks
// its ranges with it before every use.
#pragma once

#include <cstdint>
#include <optional>

namespace kiln::comm {

// Vma::flags bits (PROCMAP_QUERY_VMA_*).
inline constexpr std::uint64_t kVmaReadable = 0x1, kVmaWritable = 0x2, kVmaExecutable = 0x4,
                               kVmaShared = 0x8;

struct Vma {
  std::uintptr_t start, end;
  std::uint64_t flags, offset, inode;
  std::uint32_t dev_major, dev_minor;
  bool named;  // a file's path or a name such as [stack]

  bool readable_and_writable() const {
    return (flags & (kVmaReadable | kVmaWritable)) == (kVmaReadable | kVmaWritable);
  }
};

enum class VmaQuery {
  kCovering,        // the mapping holding the address
  kCoveringOrNext,  // that, or else the first one above it
};

// The mapping `which` of `addr` in the process whose maps `maps_fd` reads
// (an open /proc/PID/maps); nullopt where there is none or the kernel
// cannot answer.
std::optional<Vma> query_vma(int maps_fd, std::uintptr_t addr,
                             VmaQuery which = VmaQuery::kCovering);

// Whether the kernel answers PROCMAP_QUERY on `maps_fd`.
bool answers_procmap_query(int maps_fd);

}  // namespace kiln::comm
