// RequestReader: HTTP/1.1 requests read off a connection in whatever pieces
// recv() returns, for the event-driven front (event_front.h), which serves
// every connection from one thread and so cannot block on a half-read
// request. Pipelined requests come out one after another.
//
// It reads what a client of kiln serve sends: a request line, headers, and
// a body of Content-Length bytes (none without it). Anything else is an
// error naming what was wrong and the status to answer it with (400; 413 for
// a body over the bound, 431 for headers over it, 501 for a chunked body,
// 505 for a version other than HTTP/1.x); the connection is then unusable.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "kiln/serve/http_head.h"

namespace kiln::serve {

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string target;  // "/v1/predict"
  std::string body;
  bool keep_alive = true;  // HTTP/1.1 unless "Connection: close"; HTTP/1.0 only with keep-alive
};

struct RequestError {
  int status = 400;
  std::string message;  // names what is malformed
};

struct RequestLimits {
  std::size_t max_header_bytes = 64 * 1024;
  std::size_t max_body_bytes = 64 * 1024 * 1024;
};

class RequestReader {
 public:
  explicit RequestReader(RequestLimits limits = {}) : limits_(limits) {}

  // Appends bytes received.
  void feed(std::string_view bytes) { buffer_.feed(bytes); }
  // The next complete request into *out (true); false while incomplete or
  // after an error (see error()). After an error every call returns false.
  bool next(HttpRequest* out);
  const std::optional<RequestError>& error() const { return error_; }
  // True once per request whose headers ask "Expect: 100-continue" and whose
  // body has not arrived: the client waits for "HTTP/1.1 100 Continue"
  // before it sends the body (curl does for bodies over 1 KiB, and else
  // sends it after a second).
  bool take_continue() { return std::exchange(continue_due_, false); }
  // Bytes received and not yet returned as a request: a partial request is
  // in progress when non-zero.
  std::size_t buffered() const { return buffer_.size(); }

 private:
  bool fail(int status, std::string message);

  RequestLimits limits_;
  http::MessageBuffer buffer_;
  std::optional<RequestError> error_;
  bool continue_due_ = false;
  bool continue_offered_ = false;  // for the request in progress
};

}  // namespace kiln::serve
