// Sharing user memory in place: the registration cache behind the direct
// allreduce of plain buffers (Note [Sharing user memory in place],
// shared_in_place.cc), as UCX's and NCCL's user-buffer registration.
//
// Opt-in (KILN_SHM_SHARE_IN_PLACE_BYTES, kiln/comm/communicator.cc): the
// pages it shares change how the process's allocator and fork() see them.
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

// The pages of [p, p + bytes), but for the two holding its first and last
// byte and the first and last of their mapping, made shared in place on the
// first call (their contents kept) and found again on later ones: the span
// from the first such page, up to the end of the buffer or of the range
// shared earlier, whichever comes first. nullopt, having changed nothing,
// when there are no such pages, the memory is not private anonymous
// read-write memory without a name (a file mapping, the stack, the heap),
// the kernel cannot say (PROCMAP_QUERY needs Linux 6.11), or
// kMaxInPlaceShares ranges are shared already.
//
// Call only while nothing else reads or writes [p, p + bytes) (as inside a
// collective on it): the first call copies it. Thread-safe.
std::optional<SharedSpan> share_in_place(const void* p, std::size_t bytes);

// The serials of the ranges shared in place whose memory the user still
// holds, as the last share_in_place call found them: a peer may unmap any
// other of this process's in-place serials.
std::vector<std::uint64_t> live_in_place_serials();

}  // namespace kiln::comm
