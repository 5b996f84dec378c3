#include "kiln/serve/prefault.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older headers lack it
#endif

namespace kiln::serve {

std::size_t prefault_heap(std::size_t bytes) {
  if (bytes == 0) return 0;
  void* block = std::malloc(bytes);
  if (block == nullptr) return 0;
  const auto page = static_cast<std::uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = (reinterpret_cast<std::uintptr_t>(block) + page - 1) & ~(page - 1);
  const auto end = (reinterpret_cast<std::uintptr_t>(block) + bytes) & ~(page - 1);
  std::size_t done = 0;
  if (end > begin &&
      ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE) == 0) {
    done = end - begin;
  }
  std::free(block);
  return done;
}

}  // namespace kiln::serve
