// The TcpStore wire format as a server and a client read it: the input is a
// byte stream from a peer, split into the hello and frames, each frame decoded
// as a request and as every kind of response. Nothing may crash, read out of
// bounds or allocate beyond what the input's size justifies.
#include <cstdint>
#include <string>
#include <string_view>

#include "kiln/base/check.h"
#include "kiln/store/tcp/protocol.h"

using namespace kiln::store::tcp;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  if (in.size() >= kHelloBytes) (void)check_hello(in.substr(0, kHelloBytes));
  // A small limit so the fuzzer reaches "frame exceeds the limit" too.
  FrameReader reader(1 << 16);
  // Fed in uneven pieces, as recv() delivers them.
  for (std::size_t at = 0; at < in.size(); at += 1 + at % 7) {
    reader.append(in.substr(at, 1 + at % 7));
  }
  std::string body;
  for (int frames = 0; frames < 64; ++frames) {
    auto got = reader.take_frame(&body);
    if (!got.is_ok() || !*got) break;
    auto req = decode_request(body);
    if (req.is_ok()) {
      // What decodes must encode back to the same frame body.
      std::string again;
      append_request(*req, &again);
      KILN_CHECK(again.substr(kFrameHeaderBytes) == body);
    }
    for (Op op : {Op::kSet, Op::kGet, Op::kAdd, Op::kCompareSet, Op::kWait, Op::kErase,
                  Op::kCheck}) {
      (void)decode_response(op, body);
    }
  }
  return 0;
}
