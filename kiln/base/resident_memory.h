// ResidentMemory: a large anonymous mapping whose pages a helper thread
// makes resident while the caller does something else.
//
// Note [Fault in beside the join]: a restarted rank needs its state's
// memory (hundreds of MiB) before it can receive its state, and on a
// virtual machine whose guest memory the host backs lazily, first touch of
// memory the guest has not used lately costs up to ~2 s per GiB (each 4 KiB
// of it a fault in the hypervisor; docs/perf.md, issue 19): more than the
// recovery itself. The pages are made resident on a thread of their own,
// started before the process connects to its store and joins its group, so
// the faults overlap the join and then the recovery:
//   - madvise(MADV_POPULATE_WRITE) (Linux >= 5.14) maps every page writable
//     from inside the kernel, without writing the memory, so the caller may
//     write it meanwhile (a recovery streaming into it front to back): the
//     helper populates from the back, in slices, and the two meet, each
//     faulting what the other has not reached;
//   - without it, the helper writes a zero to each page, which a writer
//     beside it could lose: the caller then waits for the helper first.
// The mapping is advised to transparent huge pages (one fault per 2 MiB
// where the kernel has them), as PyTorch's CPU allocator does for large
// blocks (THP_MEM_ALLOC_ENABLE).
#pragma once

#include <cstddef>
#include <memory>
#include <span>

#include "kiln/base/status.h"

namespace kiln {

class ResidentMemory {
 public:
  // Maps `bytes` (> 0) of zeroed memory and starts making it resident on a
  // helper thread; returns at once. ResourceExhausted when the mapping fails.
  static Result<ResidentMemory> map(std::size_t bytes);

  ResidentMemory(ResidentMemory&&) noexcept;
  ResidentMemory& operator=(ResidentMemory&&) noexcept;
  ~ResidentMemory();  // waits for the helper, then unmaps

  std::span<std::byte> span() const;

  // True when the caller may write the memory before wait() returns (the
  // kernel populates without writing): reads see zeros or what was written.
  bool writable_while_populating() const;

  // Blocks until every page is resident (or the helper gave up: populating
  // is best effort; pages it did not reach fault in on first touch).
  // Returns the bytes the helper made resident. Any thread; idempotent.
  std::size_t wait();

 private:
  struct State;
  explicit ResidentMemory(std::unique_ptr<State> s);
  std::unique_ptr<State> s_;
};

}  // namespace kiln
