#include "kiln/serve/response_reader.h"

#include <gtest/gtest.h>

namespace kiln::serve {
namespace {

const std::string kTwo =
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 5\r\n\r\nhello"
    "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 2\r\n"
    "Connection: close\r\n\r\n{}";

TEST(ResponseReader, ReadsResponsesSplitAtEveryByte) {
  // Every split point of two pipelined responses: the answer never depends
  // on how recv() cut the stream.
  for (std::size_t cut = 0; cut <= kTwo.size(); ++cut) {
    ResponseReader r;
    std::vector<HttpResponse> got;
    for (std::string_view piece :
         {std::string_view(kTwo).substr(0, cut), std::string_view(kTwo).substr(cut)}) {
      r.feed(piece);
      while (true) {
        auto next = r.next();
        ASSERT_TRUE(next.is_ok()) << next.status().to_string();
        if (!next->has_value()) break;
        got.push_back(**next);
      }
    }
    ASSERT_EQ(got.size(), 2u) << "cut at " << cut;
    EXPECT_EQ(got[0].status, 200);
    EXPECT_EQ(got[0].body, "hello");
    EXPECT_FALSE(got[0].close);
    EXPECT_EQ(got[1].status, 503);
    EXPECT_EQ(got[1].body, "{}");
    EXPECT_TRUE(got[1].close);
    EXPECT_EQ(r.buffered(), 0u);
  }
}

TEST(ResponseReader, AnIncompleteBodyWaits) {
  ResponseReader r;
  r.feed("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345");
  auto next = r.next();
  ASSERT_TRUE(next.is_ok());
  EXPECT_FALSE(next->has_value());
  r.feed("67890");
  next = r.next();
  ASSERT_TRUE(next.is_ok() && next->has_value());
  EXPECT_EQ((*next)->body, "1234567890");
}

TEST(ResponseReader, NamesWhatIsWrong) {
  const std::pair<std::string, std::string> cases[] = {
      {"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n", "bad status line"},
      {"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n", "bad status line"},
      {"HTTP/1.1 200 OK\r\n\r\n", "no Content-Length"},
      {"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"},
      {"HTTP/1.1 200 OK\r\nContent-Length: 3x\r\n\r\n", "bad Content-Length"},
      {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "Transfer-Encoding"},
      {"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "without ':'"},
      {"HTTP/1.1 200 OK\r\n" + std::string(70000, 'x'), "no end of headers"},
  };
  for (const auto& [input, expected] : cases) {
    ResponseReader r;
    r.feed(input);
    auto next = r.next();
    ASSERT_FALSE(next.is_ok()) << input.substr(0, 60);
    EXPECT_NE(next.status().message().find(expected), std::string::npos) << next.status().message();
  }
}

}  // namespace
}  // namespace kiln::serve
