#include "kiln/base/line_forwarder.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <string>

namespace kiln {
namespace {

std::string read_all(std::FILE* f) {
  std::rewind(f);
  std::string out;
  char buf[256];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  return out;
}

TEST(LineForwarder, WritesWholePrefixedLinesAndTheRestOnFlush) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  LineForwarder fw("[rank 1] ", f);
  fw.append("hel", 3);
  EXPECT_EQ(read_all(f), "") << "no partial line";
  std::fseek(f, 0, SEEK_END);
  fw.append("lo\nwor", 6);
  fw.append("ld\n\ntail", 8);
  fw.flush();
  EXPECT_EQ(read_all(f), "[rank 1] hello\n[rank 1] world\n[rank 1] \n[rank 1] tail\n");
  std::fclose(f);
}

}  // namespace
}  // namespace kiln
