#include "kiln/serve/request_reader.h"

#include <gtest/gtest.h>

#include <vector>

namespace kiln::serve {
namespace {

const std::string kTwo =
    "POST /v1/predict HTTP/1.1\r\nHost: x\r\ncontent-length: 5\r\n\r\nhello"
    "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n";

TEST(RequestReader, ReadsPipelinedRequestsSplitAtEveryByte) {
  // Every split point of two pipelined requests: the result never depends
  // on how recv() cut the stream.
  for (std::size_t cut = 0; cut <= kTwo.size(); ++cut) {
    RequestReader r;
    std::vector<HttpRequest> got;
    for (std::string_view piece :
         {std::string_view(kTwo).substr(0, cut), std::string_view(kTwo).substr(cut)}) {
      r.feed(piece);
      HttpRequest req;
      while (r.next(&req)) got.push_back(req);
      ASSERT_FALSE(r.error()) << r.error()->message;
    }
    ASSERT_EQ(got.size(), 2u) << "cut at " << cut;
    EXPECT_EQ(got[0].method, "POST");
    EXPECT_EQ(got[0].target, "/v1/predict");
    EXPECT_EQ(got[0].body, "hello");
    EXPECT_TRUE(got[0].keep_alive);
    EXPECT_EQ(got[1].method, "GET");
    EXPECT_EQ(got[1].body, "");
    EXPECT_FALSE(got[1].keep_alive);
    EXPECT_EQ(r.buffered(), 0u);
  }
}

TEST(RequestReader, KeepAliveFollowsTheVersionAndTheConnectionHeader) {
  const std::pair<std::string, bool> cases[] = {
      {"GET / HTTP/1.1\r\n\r\n", true},
      {"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n", false},
      {"GET / HTTP/1.0\r\n\r\n", false},
      {"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true},
  };
  for (const auto& [text, keep_alive] : cases) {
    RequestReader r;
    r.feed(text);
    HttpRequest req;
    ASSERT_TRUE(r.next(&req)) << text;
    EXPECT_EQ(req.keep_alive, keep_alive) << text;
  }
}

TEST(RequestReader, AnIncompleteRequestWaitsAndLeadingEmptyLinesAreSkipped) {
  RequestReader r;
  r.feed("\r\nPOST /v1/predict HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345");
  HttpRequest req;
  EXPECT_FALSE(r.next(&req));
  EXPECT_FALSE(r.error());
  EXPECT_GT(r.buffered(), 0u);
  r.feed("67890");
  ASSERT_TRUE(r.next(&req));
  EXPECT_EQ(req.body, "1234567890");
}

TEST(RequestReader, NamesWhatIsWrongWithTheStatusToAnswer) {
  struct Case {
    std::string text;
    int status;
    std::string mentions;
  };
  const Case cases[] = {
      {"GARBAGE\r\n\r\n", 400, "bad request line 'GARBAGE'"},
      {"GET  / HTTP/1.1\r\n\r\n", 400, "bad request line"},
      {"GET relative HTTP/1.1\r\n\r\n", 400, "target must be a path"},
      {"G(T / HTTP/1.1\r\n\r\n", 400, "method is not a token"},
      {"GET / HTTP/2.0\r\n\r\n", 505, "HTTP/1.0 and HTTP/1.1"},
      {"GET / FTP/1.1\r\n\r\n", 400, "HTTP/1.0 and HTTP/1.1"},
      {"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "Content-Length '-1'"},
      {"POST / HTTP/1.1\r\nContent-Length: 3x\r\n\r\n", 400, "not a byte count"},
      {"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400,
       "two Content-Lengths"},
      {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501, "Transfer-Encoding"},
      {"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400, "expected 'Name: value'"},
      {"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", 400, "folded"},
      {"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n", 413, "over the bound"},
      {"POST / HTTP/1.1\r\nExpect: magic\r\n\r\n", 417, "Expect 'magic'"},
  };
  for (const Case& c : cases) {
    RequestReader r({.max_header_bytes = 1024, .max_body_bytes = 1 << 20});
    r.feed(c.text);
    HttpRequest req;
    EXPECT_FALSE(r.next(&req)) << c.text;
    ASSERT_TRUE(r.error()) << c.text;
    EXPECT_EQ(r.error()->status, c.status) << c.text;
    EXPECT_NE(r.error()->message.find(c.mentions), std::string::npos)
        << c.text << " -> " << r.error()->message;
    r.feed("GET / HTTP/1.1\r\n\r\n");  // an error is final
    EXPECT_FALSE(r.next(&req));
  }
}

TEST(RequestReader, Expect100ContinueIsDueOnceWhileTheBodyIsMissing) {
  RequestReader r;
  r.feed("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
  HttpRequest req;
  EXPECT_FALSE(r.next(&req));
  EXPECT_TRUE(r.take_continue());
  EXPECT_FALSE(r.next(&req));
  EXPECT_FALSE(r.take_continue());  // once per request
  r.feed("abc");
  ASSERT_TRUE(r.next(&req));
  EXPECT_EQ(req.body, "abc");
  EXPECT_FALSE(r.take_continue());
}

TEST(RequestReader, HeadersOverTheBoundAre431EvenBeforeTheirEnd) {
  RequestReader r({.max_header_bytes = 100, .max_body_bytes = 1000});
  r.feed("GET / HTTP/1.1\r\nX: " + std::string(200, 'a'));
  HttpRequest req;
  EXPECT_FALSE(r.next(&req));
  ASSERT_TRUE(r.error());
  EXPECT_EQ(r.error()->status, 431);
}

}  // namespace
}  // namespace kiln::serve
