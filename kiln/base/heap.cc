#include "kiln/base/heap.h"

#include <malloc.h>

namespace kiln {

void keep_freed_heap_memory() {
  // mallopt returns 0 on a value out of range (Note [Keep freed tensor memory]).
  ::mallopt(M_MMAP_THRESHOLD, 32 << 20);
  ::mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

}  // namespace kiln
