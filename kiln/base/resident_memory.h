// ResidentMemory: a large anonymous mapping whose pages helper threads
// make resident while the caller does something else.
//
// Note [Fault in beside the join]: a restarted rank needs its state's
// memory (hundreds of MiB) before it can receive its state, and on a
// virtual machine whose guest memory the host backs lazily, first touch of
// memory the guest has not used lately costs up to ~2 s per GiB (each 4 KiB
// of it a fault in the hypervisor; docs/perf.md, issue 19): more than the
// recovery itself. The pages are made resident on threads of their own,
// started before the process connects to its store and joins its group, so
// the faults overlap the join (and, if the caller wants, the recovery):
//   - madvise(MADV_POPULATE_WRITE) (Linux >= 5.14) maps every page writable
//     from inside the kernel, without writing the memory, so the caller may
//     write it meanwhile (a recovery streaming into it front to back): the
//     helpers populate from the back, in slices, and meet the writer, each
//     faulting what the others have not reached;
//   - without it, the helpers write a zero to each page, which a writer
//     beside them could lose: the caller then waits for them first.
// The cost is the host's, per vCPU: on the 2-vCPU VM measured, two threads
// fault in cold memory 1.8 times as fast as one (256 MiB: 0.37 s against
// 0.65-0.69 s; pages the guest freed a moment ago: 0.015 s), so there is a
// helper per CPU the process may use, taking slices of the mapping in turn
// (in `kiln bench ckpt`, beside the survivor's and the other rank's threads,
// two helpers were no faster than one: docs/perf.md, issue 19, session 10).
// Writing while they populate was slower there than waiting for them (the
// writer's own faults and the helpers' share the vCPUs: docs/perf.md, issue
// 19, session 10), so `kiln bench ckpt`'s restarted rank waits.
// The mapping is advised to transparent huge pages (one fault per 2 MiB
// where the kernel has them), as PyTorch's CPU allocator does for large
// blocks (THP_MEM_ALLOC_ENABLE), unless the caller asks for small pages.
//
// Note [Small pages for a restart]: which pages are cheap depends on what
// was freed last. A guest with free page reporting (virtio-balloon, as on
// the VM measured) hands free blocks of 2 MiB and more back to the host,
// which must back them again, 4 KiB at a time, when they are next used;
// free memory in smaller pieces is never reported and stays backed. A rank
// process that dies frees its heap and its tmpfs files in small pages, and
// they do not coalesce into 2 MiB blocks at once: its successor asking for
// huge pages gets blocks the host must back again (512 MiB on 2 threads:
// 0.36-0.66 s, 1-1.3 s on slow evenings), while small pages reuse what the
// dead process freed (0.21-0.27 s, in the kernel's loop: MADV_POPULATE_WRITE
// faults no page from user space). Memory freed in huge pages comes back as
// huge pages in 0.05 s. docs/perf.md, issue 19, session 11.
#pragma once

#include <cstddef>
#include <memory>
#include <span>

#include "kiln/base/status.h"

namespace kiln {

class ResidentMemory {
 public:
  // The pages the mapping is advised to (Note [Small pages for a restart]).
  enum class Pages { kHuge, kSmall };

  // Maps `bytes` (> 0) of zeroed memory and starts making it resident on
  // `helpers` threads (<= 0: one per CPU this process may run on); returns
  // at once. ResourceExhausted when the mapping fails.
  static Result<ResidentMemory> map(std::size_t bytes, int helpers = 0,
                                    Pages pages = Pages::kHuge);

  ResidentMemory(ResidentMemory&&) noexcept;
  ResidentMemory& operator=(ResidentMemory&&) noexcept;
  ~ResidentMemory();  // stops the helpers at their next slice, then unmaps

  std::span<std::byte> span() const;

  // True when the caller may write the memory before wait() returns (the
  // kernel populates without writing): reads see zeros or what was written.
  bool writable_while_populating() const;

  // Blocks until every page is resident (or the helpers gave up: populating
  // is best effort; pages it did not reach fault in on first touch).
  // Returns the bytes the helpers made resident. Any thread; idempotent.
  std::size_t wait();

 private:
  struct State;
  explicit ResidentMemory(std::unique_ptr<State> s);
  std::unique_ptr<State> s_;
};

}  // namespace kiln
