#include "kiln/store/tcp/protocol.h"

#include <gtest/gtest.h>

namespace kiln::store::tcp {
namespace {

std::string body_of(const std::string& frame) { return frame.substr(kFrameHeaderBytes); }

TEST(TcpStoreProtocol, RequestsRoundTrip) {
  std::vector<Request> requests(7);
  requests[0] = {.id = 1, .op = Op::kSet, .keys = {"k"}, .value = std::string("v\0w", 3)};
  requests[1] = {.id = 2, .op = Op::kGet, .keys = {"k"}, .timeout_ms = 1500};
  requests[2] = {.id = 3, .op = Op::kAdd, .keys = {"n"}, .delta = -42};
  requests[3] = {.id = 4, .op = Op::kCompareSet, .keys = {"c"}, .value = "new", .expected = "old"};
  requests[4] = {.id = 5, .op = Op::kWait, .keys = {"a", "b", "c"}, .timeout_ms = kNoTimeout};
  requests[5] = {.id = 6, .op = Op::kErase, .keys = {"e"}};
  requests[6] = {.id = 7, .op = Op::kCheck, .keys = {}};
  for (const Request& want : requests) {
    std::string frame;
    append_request(want, &frame);
    auto len = decode_frame_header(frame.substr(0, kFrameHeaderBytes));
    ASSERT_TRUE(len.is_ok());
    EXPECT_EQ(*len, frame.size() - kFrameHeaderBytes);
    auto got = decode_request(body_of(frame));
    ASSERT_TRUE(got.is_ok()) << got.status().to_string();
    EXPECT_EQ(got->id, want.id);
    EXPECT_EQ(got->op, want.op);
    EXPECT_EQ(got->keys, want.keys);
    EXPECT_EQ(got->value, want.value);
    EXPECT_EQ(got->expected, want.expected);
    EXPECT_EQ(got->delta, want.delta);
    if (want.op == Op::kGet || want.op == Op::kWait) {
      EXPECT_EQ(got->timeout_ms, want.timeout_ms);
    }
  }
}

TEST(TcpStoreProtocol, ResponsesRoundTripIncludingErrors) {
  std::string frame;
  append_response(Op::kAdd, {.id = 9, .number = -5}, &frame);
  auto add = decode_response(Op::kAdd, body_of(frame));
  ASSERT_TRUE(add.is_ok());
  EXPECT_EQ(add->id, 9u);
  EXPECT_EQ(add->number, -5);

  frame.clear();
  append_response(Op::kCheck, {.id = 10, .flag = true}, &frame);
  EXPECT_TRUE(decode_response(Op::kCheck, body_of(frame))->flag);

  frame.clear();
  append_response(Op::kWait, {.id = 11, .status = deadline_exceeded("still missing ['b']")},
                  &frame);
  auto err = decode_response(Op::kWait, body_of(frame));
  ASSERT_TRUE(err.is_ok());
  EXPECT_EQ(err->status.code(), Code::kDeadlineExceeded);
  EXPECT_EQ(err->status.message(), "still missing ['b']");
}

TEST(TcpStoreProtocol, MalformedBodiesAreDataLoss) {
  std::string frame;
  append_request({.id = 1, .op = Op::kCompareSet, .keys = {"k"}, .value = "d", .expected = "e"},
                 &frame);
  std::string body = body_of(frame);
  for (std::size_t n = 0; n < body.size(); ++n) {
    EXPECT_EQ(decode_request(body.substr(0, n)).status().code(), Code::kDataLoss) << n;
  }
  EXPECT_EQ(decode_request(body + "x").status().code(), Code::kDataLoss);
  std::string bad_op = body;
  bad_op[8] = 99;
  EXPECT_EQ(decode_request(bad_op).status().code(), Code::kDataLoss);
  // A wait that claims four billion keys is rejected without allocating them.
  std::string huge_wait(8, '\0');
  huge_wait += static_cast<char>(Op::kWait);
  huge_wait += std::string(4, '\xff');
  EXPECT_EQ(decode_request(huge_wait).status().code(), Code::kDataLoss);
  // A string length past the end of the body.
  std::string long_key(8, '\0');
  long_key += static_cast<char>(Op::kGet);
  long_key += std::string("\xff\xff\xff\x7f", 4);
  EXPECT_EQ(decode_request(long_key).status().code(), Code::kDataLoss);
  // An unknown status code in a reply.
  std::string reply(8, '\0');
  reply += static_cast<char>(200);
  EXPECT_EQ(decode_response(Op::kSet, reply).status().code(), Code::kDataLoss);
}

TEST(TcpStoreProtocol, HelloChecksMagicAndVersion) {
  EXPECT_TRUE(check_hello(encode_hello()).is_ok());
  EXPECT_EQ(check_hello("GET / HT").code(), Code::kDataLoss);
  std::string newer = encode_hello();
  newer[4] = static_cast<char>(kVersion + 1);
  EXPECT_EQ(check_hello(newer).code(), Code::kFailedPrecondition);
  EXPECT_EQ(check_hello("KLNS").code(), Code::kDataLoss);
}

TEST(TcpStoreFrameReader, ReassemblesFramesFedByteByByte) {
  std::string stream = encode_hello();
  for (std::uint64_t id = 1; id <= 3; ++id) {
    append_request({.id = id, .op = Op::kSet, .keys = {"k"}, .value = std::string(id * 10, 'v')},
                   &stream);
  }
  FrameReader reader;
  std::string hello;
  std::string body;
  std::vector<std::uint64_t> ids;
  for (char c : stream) {
    reader.append(std::string_view(&c, 1));
    if (hello.empty()) {
      reader.take_raw(kHelloBytes, &hello);
      continue;
    }
    auto got = reader.take_frame(&body);
    ASSERT_TRUE(got.is_ok());
    if (*got) ids.push_back(decode_request(body)->id);
  }
  EXPECT_TRUE(check_hello(hello).is_ok());
  EXPECT_EQ(ids, (std::vector<std::uint64_t>{1, 2, 3}));
  EXPECT_EQ(reader.buffered(), 0u);
}

TEST(TcpStoreFrameReader, RejectsAnOversizedLengthPrefix) {
  FrameReader reader(1024);
  reader.append(std::string("\x01\x04\x00\x00", 4));  // 1025 bytes
  std::string body;
  auto got = reader.take_frame(&body);
  ASSERT_FALSE(got.is_ok());
  EXPECT_EQ(got.status().code(), Code::kDataLoss);
  EXPECT_NE(got.status().message().find("1025"), std::string::npos);
}

}  // namespace
}  // namespace kiln::store::tcp
