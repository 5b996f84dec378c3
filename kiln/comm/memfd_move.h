// Moving private anonymous memory into a memfd where it lies, and back:
// the two steps under memory shared in place (Note [Sharing user memory in
// place], shared_in_place.cc). The address range and its bytes stay; what
// backs them changes. Neither allocates on the heap: give_back runs inside
// the allocator's madvise.
#pragma once

#include <cstdint>

#include "kiln/base/status.h"
#include "kiln/comm/procmap.h"

namespace kiln::comm {

// [begin, end) of this process, mapped from offset 0 of the memfd `fd`
// (owned by whoever holds the range).
struct MemfdRange {
  std::uintptr_t begin, end;
  int fd;
  std::uint64_t inode;
  std::uint32_t dev_major, dev_minor;

  // Whether `v` maps this range's memfd.
  bool maps(const Vma& v) const {
    return v.inode == inode && v.dev_major == dev_major && v.dev_minor == dev_minor &&
           (v.flags & kVmaShared) != 0;
  }
};

// Moves the private anonymous memory [begin, end) (page-aligned, inside one
// mapping) into a new memfd with its bytes, a chunk at a time: the chunk
// written into the file, a shared mapping of it moved over the chunk's
// addresses (the kernel checks what could fail, the map count, before it
// unmaps the old pages). Adjacent chunks' mappings merge into one. On
// failure what was moved is given back and the error names the range.
// `maps_fd`: this process's /proc/self/maps (procmap.h).
Result<MemfdRange> move_into_memfd(int maps_fd, std::uintptr_t begin, std::uintptr_t end);

// Every piece of the range still mapping its memfd replaced, with mremap, by
// private anonymous memory holding the file's bytes there and the piece's
// protection, a chunk at a time (the copy never holds twice the range).
// False where a piece could not be (out of memory): it stays shared, and
// the first such failure in the process is logged. The fd stays open.
//
// Note [Giving memory back]: the copy and the remap are two steps, so a
// write by another thread between them is lost. Nothing writes a range
// while a collective shares it, but after the user frees it the allocator
// may hand its pieces to anyone, so the callers keep the causes rare: the
// user unmapping or mapping over part of a range (what is left goes back),
// and advice that can tell shared memory from private (fork inheritance,
// KSM; not the discards nor the huge-page hints allocators give on live
// memory, which leave the range shared). Doing it in one step needs the
// writers stopped (userfaultfd write-protection), or a private mapping of
// the memfd, which reads the file again after MADV_DONTNEED (stale bytes
// where the allocator expects zeros).
bool give_back(int maps_fd, const MemfdRange& range);

}  // namespace kiln::comm
