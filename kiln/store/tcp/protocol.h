// The TcpStore wire format (docs/store-protocol.md is the full description).
//
//   client -> server   hello: u32 magic "KLNS", u32 version
//   server -> client   hello: the same two fields, then an authentication
//                      challenge; client -> server its proof; server ->
//                      client the verdict (kiln/base/auth/handshake.h)
//   then, both ways    frames: u32 body length, body (at most kMaxFrameBytes)
//
// Integers are little-endian; a string is a u32 length and its bytes. A
// request body is u64 id, u8 op, the op's arguments; a response body is the
// request's id, u8 code (kiln::Code), then an error message or the op's
// result. The server may answer a connection's requests out of order (a
// parked get answers when its key appears); ids pair them up.
//
// Everything here is pure: encoding, decoding and frame splitting, no I/O.
// Decoding never trusts a length: malformed input is a DataLoss Status.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/base/status.h"

namespace kiln::store::tcp {

inline constexpr std::uint32_t kMagic = 0x534e4c4b;  // "KLNS" as little-endian bytes
// 2: authentication after the hello.
inline constexpr std::uint32_t kVersion = 2;
inline constexpr std::size_t kHelloBytes = 8;
inline constexpr std::size_t kFrameHeaderBytes = 4;
inline constexpr std::uint32_t kMaxFrameBytes = 64u << 20;
// A get or wait request without a timeout.
inline constexpr std::uint64_t kNoTimeout = ~std::uint64_t{0};

enum class Op : std::uint8_t {
  kSet = 1,
  kGet = 2,
  kAdd = 3,
  kCompareSet = 4,
  kWait = 5,
  kErase = 6,
  kCheck = 7,
};

// "set", "get", ... as the Store method is named.
std::string_view op_name(Op op);

struct Request {
  std::uint64_t id = 0;
  Op op = Op::kSet;
  // One key for every op but wait and check.
  std::vector<std::string> keys;
  std::string value;                      // set: the value; compare_set: desired
  std::string expected;                   // compare_set
  std::int64_t delta = 0;                 // add
  std::uint64_t timeout_ms = kNoTimeout;  // get, wait: how long the server parks it
};

struct Response {
  std::uint64_t id = 0;
  Status status;            // ok, or the error the server reports
  std::string value;        // get, compare_set
  std::int64_t number = 0;  // add
  bool flag = false;        // erase, check
};

std::string encode_hello();
// Ok if `hello` (kHelloBytes long) carries our magic and version; DataLoss
// (wrong magic: not a Kiln store peer) or FailedPrecondition (other version).
Status check_hello(std::string_view hello);

// Append one whole frame (header and body) to *out.
void append_request(const Request& request, std::string* out);
void append_response(Op op, const Response& response, std::string* out);

// Parse a frame body. The response's layout depends on the request's op.
Result<Request> decode_request(std::string_view body);
Result<Response> decode_response(Op op, std::string_view body);

// The body length a frame header announces; DataLoss above `max_frame`.
Result<std::uint32_t> decode_frame_header(std::string_view header,
                                          std::uint32_t max_frame = kMaxFrameBytes);

// Splits a byte stream that arrives in pieces into the hello and frames.
class FrameReader {
 public:
  explicit FrameReader(std::uint32_t max_frame = kMaxFrameBytes) : max_frame_(max_frame) {}

  void append(std::string_view bytes);
  std::size_t buffered() const { return buf_.size() - pos_; }

  // Moves exactly n raw bytes to *out if that many are buffered.
  bool take_raw(std::size_t n, std::string* out);
  // Moves the next complete frame's body to *body: true if there was one,
  // false if more bytes are needed, DataLoss if the header is over the limit.
  Result<bool> take_frame(std::string* body);

 private:
  void compact();

  std::uint32_t max_frame_;
  std::string buf_;
  std::size_t pos_ = 0;  // bytes of buf_ already taken
};

}  // namespace kiln::store::tcp
