#include "kiln/base/units.h"

#include <gtest/gtest.h>

namespace kiln {
namespace {

TEST(ParseBytes, AcceptsSuffixes) {
  EXPECT_EQ(parse_bytes("0").value(), 0u);
  EXPECT_EQ(parse_bytes("4K").value(), 4096u);
  EXPECT_EQ(parse_bytes("256M").value(), 256u << 20);
  EXPECT_EQ(parse_bytes("1G").value(), 1u << 30);
  EXPECT_EQ(parse_bytes("64KiB").value(), 64u << 10);
  EXPECT_EQ(parse_bytes("8k").value(), 8192u);
}

TEST(ParseBytes, RejectsGarbage) {
  EXPECT_FALSE(parse_bytes("").is_ok());
  EXPECT_FALSE(parse_bytes("M").is_ok());
  EXPECT_FALSE(parse_bytes("12X").is_ok());
  EXPECT_FALSE(parse_bytes("99999999999999999999T").is_ok());
}

TEST(FormatBytes, RoundTrips) {
  EXPECT_EQ(format_bytes(4096), "4K");
  EXPECT_EQ(format_bytes(256u << 20), "256M");
  EXPECT_EQ(format_bytes(1000), "1000");
  EXPECT_EQ(parse_bytes(format_bytes(3u << 30)).value(), 3u << 30);
}

}  // namespace
}  // namespace kiln
