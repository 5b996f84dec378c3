#include "kiln/serve/testing/httplib_server.h"

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <memory>

#include "kiln/base/deadline.h"
#include "kiln/serve/event_front.h"

namespace kiln::serve::testing {

HttplibServer::HttplibServer(httplib::Server& server) : server_(server) {
  // httplib keeps its listening socket private; the socket-options hook is
  // the one place that sees it.
  auto listening = std::make_shared<int>(-1);
  server_.set_socket_options([listening](socket_t sock) { *listening = sock; });
  server_.set_tcp_nodelay(true);  // Note [TCP_NODELAY] (event_front.cc)
  const int port = server_.bind_to_any_port("127.0.0.1");
  if (port <= 0) {
    ADD_FAILURE() << "httplib: cannot bind 127.0.0.1:0";
    return;
  }
  // Note [Listen backlog] (event_front.h): httplib's own is 5, and a test's
  // clients connect at once. Linux raises a listening socket's backlog in
  // place.
  if (::listen(*listening, kListenBacklog) != 0) {
    ADD_FAILURE() << "raising httplib's listen backlog: " << std::strerror(errno);
    return;
  }
  loop_ = std::thread([this] { server_.listen_after_bind(); });
  // httplib's stop() is a no-op until its loop runs.
  const Deadline deadline = Deadline::after_seconds(10);
  while (!server_.is_running() && !deadline.expired()) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (!server_.is_running()) {
    ADD_FAILURE() << "httplib's loop did not start within 10 s";
    return;
  }
  port_ = port;
}

HttplibServer::~HttplibServer() {
  server_.stop();
  if (loop_.joinable()) loop_.join();
}

}  // namespace kiln::serve::testing
