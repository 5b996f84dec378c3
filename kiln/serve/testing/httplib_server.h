// A cpp-httplib server on loopback for the load generator's tests: the
// generator checked against an HTTP implementation that is not kiln serve's
// own front (event_front.h), so a misreading shared by both cannot hide.
#pragma once

#include <httplib.h>

#include <thread>

namespace kiln::serve::testing {

// Serves `server`'s routes (installed by the caller) on 127.0.0.1:<any
// port> until destroyed. port() is 0 (and a test failure recorded) when it
// could not start.
class HttplibServer {
 public:
  explicit HttplibServer(httplib::Server& server);
  ~HttplibServer();
  HttplibServer(const HttplibServer&) = delete;
  HttplibServer& operator=(const HttplibServer&) = delete;

  int port() const { return port_; }

 private:
  httplib::Server& server_;
  std::thread loop_;  // job: httplib's accept loop
  int port_ = 0;
};

}  // namespace kiln::serve::testing
