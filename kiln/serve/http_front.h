// A cpp-httplib server set up as kiln serve's fronts once were (the replica
// and the router are EventFronts now, event_front.h; tests still serve with
// this): a thread pool sized for keep-alive connections,
// TCP_NODELAY, no SO_REUSEPORT, and a listen backlog that holds a burst of
// new connections. Starts the accept loop and returns once it serves.
#pragma once

#include <functional>
#include <string>
#include <thread>

#include "kiln/base/status.h"

namespace httplib {
class Server;
class TaskQueue;
}  // namespace httplib

namespace kiln::serve {

// Note [Listen backlog]: Debian's cpp-httplib 0.11 is a compiled library
// whose listen() asks for a backlog of 5 (CPPHTTPLIB_LISTEN_BACKLOG, fixed
// when the .so was built). A load generator or a router opening tens of
// keep-alive connections at once overflows that accept queue; Linux then
// drops the SYN or the handshake's ACK (tcp_abort_on_overflow = 0), the
// client retransmits a second later (a 1 s latency spike), and when the SYN
// queue is full too a syncookie that fails validation is answered with a
// reset, which the client reports as "no answer: Read" after it has sent
// its request. start_http_front() calls listen() again on the bound socket
// with this backlog (Linux updates a listening socket's backlog in place;
// net.core.somaxconn caps it).
inline constexpr int kListenBacklog = 4096;

// Threads a front starts with; it adds more as connections need them, up to
// HttpFrontOptions::threads (Note [A pool that grows] in growing_pool.h).
inline constexpr int kInitialHttpThreads = 8;

struct HttpFrontOptions {
  std::string host = "127.0.0.1";
  int port = 0;  // 0: any free port
  // At most: httplib holds a thread per keep-alive connection.
  int threads = 256;
  std::string what = "serve";  // names this front in errors
  // Where accepted connections go; empty: a pool of `threads`. Tests hold
  // the accept loop with one.
  std::function<httplib::TaskQueue*()> task_queue;
};

// Configures `server` (whose routes are installed), binds host:port, raises
// its listen backlog (Note [Listen backlog]), and runs its accept loop on
// `*loop` until server.stop(). Returns the bound port; Unavailable naming
// host:port when it cannot bind or does not start within 10 s.
Result<int> start_http_front(httplib::Server& server, const HttpFrontOptions& options,
                             std::thread* loop);

}  // namespace kiln::serve
