// Sharing user memory in place: the registration cache behind the direct
// allreduce of plain buffers (Note [Sharing user memory in place],
// shared_in_place.cc), as UCX's and NCCL's user-buffer registration.
//
// On by default where it is safe (sharing_in_place_is_safe): the pages it
// shares would otherwise not read back as zero after the allocator's
// MADV_DONTNEED, so this process's madvise must be Kiln's (madvise_hook.cc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "kiln/comm/shared_buffer.h"

namespace kiln::comm {

// At most this many ranges stay shared in place at once; a range freed by
// its user no longer counts from the next call that looks.
constexpr std::size_t kMaxInPlaceShares = 16;

// Bytes [begin, end) of a user's buffer, which peers on this host reach
// through `region` (its offset is that of `begin`).
struct SharedSpan {
  char* begin = nullptr;
  char* end = nullptr;
  SharedRegion region;
};

// Whether share_in_place may run in this process: the kernel answers
// PROCMAP_QUERY (Linux 6.11) and every madvise called through the dynamic
// linker reaches Kiln's (madvise_hook.cc: not so where Kiln was loaded
// into a private scope, e.g. a Python extension), so memory shared in place
// keeps private memory's meaning for the allocator. Thread-safe.
bool sharing_in_place_is_safe();

// The pages of [p, p + bytes), but for the two holding its first and last
// byte and the first and last of their mapping, made shared in place on the
// first call (their contents kept) and found again on later ones: the span
// from the first such page, up to the end of the buffer or of the range
// shared earlier, whichever comes first. nullopt, having changed nothing,
// when there are no such pages, the memory is not private anonymous
// read-write memory without a name (a file mapping, the stack, the heap),
// the kernel cannot say (PROCMAP_QUERY needs Linux 6.11),
// kMaxInPlaceShares ranges are shared already, or sharing stopped because
// the process frees its buffers before they pay the copy back (Note
// [Sharing user memory in place]).
//
// Call only while nothing else reads or writes [p, p + bytes) (as inside a
// collective on it): the first call copies it. Never on memory pinned for a
// device's DMA (cudaHostRegister, ibv_reg_mr): the move gives its addresses
// new pages and the device keeps the old (docs/comm.md). Thread-safe.
std::optional<SharedSpan> share_in_place(const void* p, std::size_t bytes);

// The serials of the ranges shared in place whose memory the user still
// holds, as the last share_in_place call found them: a peer may unmap any
// other of this process's in-place serials.
std::vector<std::uint64_t> live_in_place_serials();

// What sharing in place has cost this process so far (`kiln bench comm`
// reports it: the first use of a buffer pays the copy).
struct InPlaceShareStats {
  std::uint64_t shares = 0;    // ranges made shared
  std::uint64_t bytes = 0;     // their bytes
  double seconds = 0;          // spent making them shared
  std::uint64_t returned = 0;  // ranges given back as private memory
};
InPlaceShareStats in_place_share_stats();

// Forgets the buffers freed before they paid back (as a forked child does),
// so tests that free what they share do not stop each other's sharing.
void reset_in_place_payback_for_testing();

// For madvise_hook.cc: runs `advice` over [addr, addr + len) so that memory
// shared in place answers as private anonymous memory would (Note [Sharing
// user memory in place]); nullopt when no such memory is in the range and
// the call should go to the kernel as it is. Sets errno as madvise does.
std::optional<int> madvise_shared_in_place(void* addr, std::size_t len, int advice);

}  // namespace kiln::comm
