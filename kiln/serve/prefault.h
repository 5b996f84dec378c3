// Fresh heap memory made resident in one call instead of one page fault per
// 4 KiB page as it is first written.
//
// Note [Pre-faulted heap]: a replica on a node-cache hit spent most of its
// model build (16-25 ms of a 23 ms cached start, docs/perf.md issue 20) on
// 600-660 page faults: the module's parameters land in fresh heap pages,
// and on this paravirtualised VM every first touch traps to the hypervisor
// (~15-20 us each). madvise(MADV_POPULATE_WRITE) maps the same pages from
// inside the kernel with no trap per page. Freed again, the block stays in
// the heap (Note [Keep freed tensor memory], kiln/base/heap.h): the model
// built next on this thread's arena takes its pages without faulting. The
// populate runs while another thread asks the store for the newest step, so
// a hit pays for neither one after the other.
#pragma once

#include <cstddef>

namespace kiln::serve {

// Allocates `bytes` on the calling thread's malloc arena, populates them and
// frees them (kept by keep_freed_heap_memory, which must have been called).
// Returns the bytes made resident (0 where the kernel has no
// MADV_POPULATE_WRITE, before Linux 5.14: the build then faults as before).
// Blocks for the populate; best effort, never fails.
std::size_t prefault_heap(std::size_t bytes);

}  // namespace kiln::serve
