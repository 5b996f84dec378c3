// The pieces both HTTP readers share (http_head.h); the readers' own tests
// cover them in place (request_reader_test.cc, response_reader_test.cc).
#include "kiln/serve/http_head.h"

#include <gtest/gtest.h>

#include <vector>

namespace kiln::serve::http {
namespace {

TEST(HttpHead, ContentLengthIsDigitsOnly) {
  EXPECT_EQ(parse_content_length("0"), 0u);
  EXPECT_EQ(parse_content_length("1234"), 1234u);
  for (const char* bad : {"", "-1", "+1", "12 ", "1.5", "0x10", "99999999999999999999999"}) {
    EXPECT_EQ(parse_content_length(bad), std::nullopt) << "'" << bad << "'";
  }
}

TEST(HttpHead, ListsFindsATokenInAnyCaseAmongCommasAndWhitespace) {
  EXPECT_TRUE(lists("close", "close"));
  EXPECT_TRUE(lists("keep-alive, Close", "close"));
  EXPECT_TRUE(lists(" upgrade ,\tCLOSE\t", "close"));
  EXPECT_FALSE(lists("closed", "close"));
  EXPECT_FALSE(lists("", "close"));
  EXPECT_FALSE(lists("keep-alive,", "close"));
}

TEST(HttpHead, HeadLinesGivesTheStartLineThenEachHeaderLine) {
  HeadLines lines("POST / HTTP/1.1\r\nA: 1\r\nB:2 ");  // up to the "\r\n\r\n"
  EXPECT_EQ(lines.start_line(), "POST / HTTP/1.1");
  std::vector<std::string_view> got;
  std::string_view line;
  while (lines.next(&line)) got.push_back(line);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0], "A: 1");
  EXPECT_EQ(got[1], "B:2 ");
  const auto f = split_field(got[1]);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->name, "B");
  EXPECT_EQ(f->value, "2");
  EXPECT_FALSE(split_field("no colon").has_value());
  HeadLines bare("GET / HTTP/1.1");
  EXPECT_FALSE(bare.next(&line));
}

TEST(HttpHead, MessageBufferCompactsWhatWasConsumed) {
  MessageBuffer b;
  b.feed("abc");
  b.consume(1);
  EXPECT_EQ(b.pending(), "bc");
  b.consume(2);
  EXPECT_EQ(b.size(), 0u);
  const std::string big(100 * 1024, 'x');
  b.feed(big);
  b.feed("tail");
  b.consume(big.size());  // past the compaction threshold
  EXPECT_EQ(b.pending(), "tail");
  EXPECT_EQ(b.size(), 4u);
}

}  // namespace
}  // namespace kiln::serve::http
