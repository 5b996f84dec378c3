// Note [Kiln's madvise]
// Memory shared in place (Note [Sharing user memory in place]) is a shared
// mapping of a memfd where the user had private anonymous memory, and the
// kernel's madvise treats the two differently where allocators depend on
// it: MADV_DONTNEED zeroes private pages but leaves a file's (a later calloc
// that trusts the zeroing, as jemalloc's of a purged extent, would hand out
// stale bytes), and MADV_FREE fails on shared mappings. So this process's
// madvise is Kiln's, as UCX's and Open MPI's registration caches hook
// munmap and madvise: on memory shared in place it answers as private
// memory would (madvise_shared_in_place), everything else goes on as it is
// to the next madvise in the lookup order (an LD_PRELOADed interposer's, a
// memory profiler's, else libc's), as any interposer should.
//
// Defined here and exported from every executable that links kiln_comm
// (--export-dynamic-symbol, kiln/comm/CMakeLists.txt), it binds each call
// that goes through the dynamic linker, an LD_PRELOADed allocator's
// included. glibc's malloc calls the kernel directly, but never trusts
// MADV_DONTNEED to zero (its calloc clears all but freshly mapped memory).
// Where the dynamic linker finds another madvise first (Kiln loaded into a
// private scope, as a Python extension is), sharing in place stays off:
// madvise_hook_is_active. Raw madvise system calls (a statically linked
// allocator that makes its own) are not seen.
#include "kiln/comm/madvise_hook.h"

#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstddef>

#include "kiln/comm/shared_in_place.h"

namespace {

using Madvise = int (*)(void*, std::size_t, int);

// The madvise after Kiln's, looked up when the library is loaded and not at
// the first call: dlsym may allocate, and that call may come from inside
// the allocator. Calls before then (other libraries' constructors) go to
// the kernel.
std::atomic<Madvise> g_next_madvise{nullptr};

__attribute__((constructor)) void find_next_madvise() {
  g_next_madvise.store(reinterpret_cast<Madvise>(dlsym(RTLD_NEXT, "madvise")),
                       std::memory_order_release);
}

}  // namespace

extern "C" {

__attribute__((visibility("hidden"))) int kiln_madvise(void* addr, std::size_t len,
                                                       int advice) noexcept {
  const int saved = errno;
  if (auto answered = kiln::comm::madvise_shared_in_place(addr, len, advice)) {
    if (*answered == 0) errno = saved;  // as the kernel: errno only on failure
    return *answered;
  }
  errno = saved;
  if (const Madvise next = g_next_madvise.load(std::memory_order_acquire)) {
    return next(addr, len, advice);
  }
  return static_cast<int>(syscall(SYS_madvise, addr, len, advice));
}

__attribute__((visibility("default"))) int madvise(void* addr, std::size_t len,
                                                   int advice) noexcept
    __attribute__((alias("kiln_madvise")));

}  // extern "C"

namespace kiln::comm {

bool madvise_hook_is_active() {
  static const bool active =
      dlsym(RTLD_DEFAULT, "madvise") == reinterpret_cast<void*>(&kiln_madvise);
  return active;
}

}  // namespace kiln::comm
