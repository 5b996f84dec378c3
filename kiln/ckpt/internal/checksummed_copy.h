// One pass over a snapshot that both copies it and checksums its entries:
// what a rank's successor does with its buddy's snapshot file on one host
// (Note [The successor checksums what it copies], memory_tier.cc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace kiln::ckpt::internal {

// The XXH3-64 of each of the entries of `src` (sizes `entry_bytes`, back to
// back), with the bytes copied to `dst` on the way (null: only checksummed).
// A cache-sized piece at a time: each piece is read from memory once,
// checksummed while in cache, and written to `dst` with streaming stores, so
// the copy moves no more memory than a memcpy of the same bytes.
std::vector<std::uint64_t> copy_and_checksum(std::byte* dst, const std::byte* src,
                                             std::span<const std::uint64_t> entry_bytes);

}  // namespace kiln::ckpt::internal
