#include "kiln/base/backoff.h"

#include <gtest/gtest.h>

namespace kiln {
namespace {

using std::chrono::milliseconds;

TEST(Backoff, DelaysGrowAndStayUnderTheCap) {
  Backoff b({.base = milliseconds(10), .cap = milliseconds(80)});
  Clock::duration max_seen{0};
  for (int i = 0; i < 50; ++i) {
    auto d = b.next_delay();
    EXPECT_GE(d, milliseconds(5));
    EXPECT_LE(d, milliseconds(80));
    max_seen = std::max(max_seen, d);
  }
  EXPECT_GT(max_seen, milliseconds(10));  // grew beyond the base
}

TEST(Backoff, StopsAfterMaxAttempts) {
  Backoff b({.base = std::chrono::microseconds(10), .cap = std::chrono::microseconds(20),
             .max_attempts = 3});
  int retries = 0;
  while (b.sleep_before_retry(Deadline::never())) ++retries;
  EXPECT_EQ(retries, 3);
}

TEST(Backoff, StopsAtTheDeadline) {
  Backoff b({.base = milliseconds(1), .cap = milliseconds(1)});
  EXPECT_FALSE(b.sleep_before_retry(Deadline::after_ms(0)));
}

}  // namespace
}  // namespace kiln
