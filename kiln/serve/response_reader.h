// ResponseReader: HTTP/1.1 responses read off a keep-alive connection in
// whatever pieces recv() returns, for the load generator's event loop (one
// thread for every connection, so it cannot block on a half-read answer).
//
// It reads what kiln serve's fronts write: a status line, headers, and a
// body of Content-Length bytes. A chunked or length-less body, or a status
// line that is not HTTP/1.x NNN, is an error naming what was wrong.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "kiln/base/status.h"
#include "kiln/serve/http_head.h"

namespace kiln::serve {

struct HttpResponse {
  int status = 0;
  std::string body;
  bool close = false;  // "Connection: close": the server ends the connection after it
};

class ResponseReader {
 public:
  // Appends bytes received.
  void feed(std::string_view bytes) { buffer_.feed(bytes); }
  // The next complete response; nullopt while incomplete; an error when
  // what was received is not a response this reader understands (the
  // connection is then unusable).
  Result<std::optional<HttpResponse>> next();
  // Bytes received and not yet returned as a response.
  std::size_t buffered() const { return buffer_.size(); }

 private:
  http::MessageBuffer buffer_;
};

}  // namespace kiln::serve
