// Process-wide policy of glibc's allocator for processes that allocate the
// same large tensor sizes over and over (a training step's activations, a
// serving batch's).
//
// Note [Keep freed tensor memory]: glibc's malloc hands blocks above its
// mmap threshold (and a heap top above its trim threshold) back to the
// kernel when they are freed, so every pass that allocates buffers past that
// threshold maps fresh pages and takes a page fault per 4 KiB, plus the
// unmapping's TLB shootdown across cores. Measured on the 2-core VM
// (docs/perf.md): serving the CNN, 0.8-1.1 ms per image instead of 0.21 ms
// (issue 20); a pipeline stage's 256 KiB activation buffers, about 0.02 of
// bubble at p 4 m 4 (issue 18). Such a process keeps what it freed instead:
// mmap only above 32 MiB (glibc's largest threshold), trim only above 1 GiB.
// Used by `kiln serve`'s replicas, pipeline stages and `kiln train`
// (train::run_training, for every strategy: a training step allocates the
// same tensors again; `kiln bench ddp` does as train does). A process-wide
// setting, so made by the entry point that owns the process, not by a
// library's factory such as DistributedDataParallel::create.
#pragma once

namespace kiln {

// Idempotent; call before the first large allocation. A glibc without these
// knobs runs correctly, only slower, so nothing is reported.
void keep_freed_heap_memory();

}  // namespace kiln
