// copy_and_checksum copies a snapshot and gives each entry's checksum, as
// the shard format records it, in one pass.
#include "kiln/ckpt/internal/checksummed_copy.h"

#include <gtest/gtest.h>

#include <cstring>
#include <numeric>

#include "kiln/base/testing/random_bytes.h"
#include "kiln/base/xxh3.h"
#include "kiln/ckpt/format.h"
#include "kiln/ckpt/internal/snapshot_stream.h"

namespace kiln::ckpt::internal {
namespace {

using kiln::testing::random_bytes;

TEST(ChecksummedCopy, CopiesEveryByteAndSumsEachEntryAsTheShardFormatDoes) {
  // Empty, tiny, several cache pieces with a ragged end, and a small last one.
  const std::vector<std::uint64_t> sizes{0, 3, 2 * kStreamChunk + 5, 1000};
  const std::uint64_t total = std::accumulate(sizes.begin(), sizes.end(), std::uint64_t{0});
  const std::vector<std::byte> src = random_bytes(total);
  std::vector<std::byte> dst(total + 1);
  // dst one byte off alignment, so the streaming copy has ragged edges too.
  const auto sums = copy_and_checksum(dst.data() + 1, src.data(), sizes);
  ASSERT_EQ(sums.size(), sizes.size());
  std::uint64_t at = 0;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    EXPECT_EQ(sums[i], checksum(src.data() + at, sizes[i])) << "entry " << i;
    at += sizes[i];
  }
  EXPECT_EQ(std::memcmp(dst.data() + 1, src.data(), total), 0);
  EXPECT_EQ(copy_and_checksum(nullptr, src.data(), sizes), sums) << "checksums alone";
}

}  // namespace
}  // namespace kiln::ckpt::internal
