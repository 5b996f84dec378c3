// kiln::xxh3 is libxxhash's XXH3_64bits, whichever copy (AVX2 or baseline)
// the CPU runs: checkpoints and dataset shards written before, and by other
// tools, hold libxxhash's sums.
#include "kiln/base/xxh3.h"

#include <gtest/gtest.h>
#include <xxhash.h>

#include <cstddef>
#include <vector>

#include "kiln/base/testing/random_bytes.h"

namespace kiln {
namespace {

using kiln::testing::random_bytes;

TEST(Xxh3, GivesLibxxhashsResultsWholeAndInPieces) {
  const auto bytes = random_bytes(3 * (1 << 20) + 77);
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{17}, std::size_t{240},
                        std::size_t{1025}, bytes.size()}) {
    const std::uint64_t want = XXH3_64bits(bytes.data(), n);
    EXPECT_EQ(xxh3(bytes.data(), n), want) << n << " bytes";
    Xxh3 h;
    for (std::size_t at = 0; at < n;) {
      const std::size_t piece = std::min<std::size_t>(n - at, 1 + at % 70001);
      h.update(bytes.data() + at, piece);
      at += piece;
    }
    EXPECT_EQ(h.digest(), want) << n << " bytes in pieces";
  }
}

TEST(Xxh3, TheSpanFormHashesTheSameBytes) {
  const auto bytes = random_bytes(4099);
  const std::span<const std::uint8_t> view(reinterpret_cast<const std::uint8_t*>(bytes.data()),
                                           bytes.size());
  EXPECT_EQ(xxh3(view), XXH3_64bits(bytes.data(), bytes.size()));
}

}  // namespace
}  // namespace kiln
