#include "kiln/base/deadline.h"

#include <gtest/gtest.h>

namespace kiln {
namespace {

using std::chrono::microseconds;
using std::chrono::milliseconds;

// A timeout handed on in whole milliseconds must not end before the
// deadline: remaining_ms() rounds up (truncating made an etcd get with a
// 150 ms timeout give up after 149.7 ms).
TEST(Deadline, RemainingMillisecondsNeverFallShortOfTheTimeLeft) {
  for (int i = 0; i < 100; ++i) {
    Deadline d = Deadline::after(milliseconds(150) + microseconds(10 * i + 1));
    const std::int64_t ms = d.remaining_ms();
    EXPECT_GE(milliseconds(ms), d.remaining()) << "attempt " << i;
  }
  EXPECT_EQ(Deadline::after(milliseconds(-1)).remaining_ms(), 0);
  EXPECT_EQ(Deadline::never().remaining_ms(), INT64_MAX);
}

}  // namespace
}  // namespace kiln
