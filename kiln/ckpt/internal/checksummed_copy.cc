#include "kiln/ckpt/internal/checksummed_copy.h"

#include <algorithm>

#include "kiln/ckpt/internal/snapshot_stream.h"
#include "kiln/base/xxh3.h"
#include "kiln/comm/reduce.h"

namespace kiln::ckpt::internal {

std::vector<std::uint64_t> copy_and_checksum(std::byte* dst, const std::byte* src,
                                             std::span<const std::uint64_t> entry_bytes) {
  std::vector<std::uint64_t> sums;
  sums.reserve(entry_bytes.size());
  std::uint64_t at = 0;
  for (std::uint64_t bytes : entry_bytes) {
    Xxh3 h;
    for (std::uint64_t done = 0; done < bytes;) {
      const auto n = static_cast<std::size_t>(std::min<std::uint64_t>(kStreamChunk, bytes - done));
      // Checksummed first: the read brings the piece into cache, the copy
      // then reads it from there.
      h.update(src + at + done, n);
      if (dst != nullptr) comm::copy_streaming(dst + at + done, src + at + done, n, false);
      done += n;
    }
    sums.push_back(h.digest());
    at += bytes;
  }
  if (dst != nullptr) comm::streaming_fence();
  return sums;
}

}  // namespace kiln::ckpt::internal
