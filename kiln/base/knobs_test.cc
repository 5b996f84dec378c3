#include "kiln/base/knobs.h"

#include <cstdlib>

#include <gtest/gtest.h>

namespace kiln {
namespace {

const Knob<std::int64_t> kTestInt{"KILN_TEST_KNOB_INT", 7, "an integer knob for tests"};
const Knob<bool> kTestBool{"KILN_TEST_KNOB_BOOL", false, "a flag for tests"};

TEST(Knob, DefaultThenEnvironmentThenMalformed) {
  unsetenv("KILN_TEST_KNOB_INT");
  EXPECT_EQ(kTestInt.get(), 7);
  setenv("KILN_TEST_KNOB_INT", "42", 1);
  EXPECT_EQ(kTestInt.get(), 42);
  setenv("KILN_TEST_KNOB_INT", "4x2", 1);
  EXPECT_EQ(kTestInt.get(), 7);
  unsetenv("KILN_TEST_KNOB_INT");
}

TEST(Knob, BoolSpellings) {
  setenv("KILN_TEST_KNOB_BOOL", "true", 1);
  EXPECT_TRUE(kTestBool.get());
  setenv("KILN_TEST_KNOB_BOOL", "0", 1);
  EXPECT_FALSE(kTestBool.get());
  unsetenv("KILN_TEST_KNOB_BOOL");
}

TEST(Knob, IsListedOnce) {
  int seen = 0;
  for (const auto& k : registered_knobs()) {
    if (k.name == "KILN_TEST_KNOB_INT") {
      ++seen;
      EXPECT_EQ(k.default_value, "7");
    }
  }
  EXPECT_EQ(seen, 1);
}

}  // namespace
}  // namespace kiln
