#include "kiln/serve/http_front.h"

#include <fmt/format.h>
#include <httplib.h>
#include <sys/socket.h>

#include <algorithm>
#include <memory>

#include "kiln/base/deadline.h"
#include "kiln/serve/growing_pool.h"

namespace kiln::serve {

Result<int> start_http_front(httplib::Server& server, const HttpFrontOptions& o,
                             std::thread* loop) {
  // httplib creates the listening socket inside bind and keeps it private;
  // its socket-options hook is the one place that sees the descriptor. It
  // runs once per address tried, so the last one seen is the bound one.
  auto listening = std::make_shared<int>(-1);
  // httplib's default adds SO_REUSEPORT, which lets a second server bind a
  // port in use and take half its requests: a busy port must be an error.
  server.set_socket_options([listening](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    *listening = sock;
  });
  const int threads = std::max(2, o.threads);
  // Note [A pool that grows] (growing_pool.h).
  server.new_task_queue = o.task_queue ? o.task_queue : [threads] {
    return new GrowingThreadPool(std::min(threads, kInitialHttpThreads), threads);
  };
  server.set_keep_alive_max_count(1000000);
  // Note [TCP_NODELAY]: httplib writes a message's headers and body in
  // separate sends; with Nagle's algorithm on, the second waits for the
  // peer's delayed ACK (40 ms on Linux), which alone would spend half a
  // 100 ms SLO. Every HTTP socket of kiln serve turns it off.
  server.set_tcp_nodelay(true);

  int port = o.port;
  if (o.port == 0) {
    port = server.bind_to_any_port(o.host);
    if (port <= 0) return unavailable(fmt::format("{}: cannot bind {}:0", o.what, o.host));
  } else if (!server.bind_to_port(o.host, o.port)) {
    return unavailable(fmt::format("{}: cannot bind {}:{} (in use?)", o.what, o.host, o.port));
  }
  // Note [Listen backlog].
  if (*listening < 0 || ::listen(*listening, kListenBacklog) != 0) {
    const int err = errno;
    server.stop();
    return errno_status(fmt::format("{} {}:{}: raising the listen backlog to {}", o.what, o.host,
                                    port, kListenBacklog),
                        *listening < 0 ? EBADF : err);
  }
  *loop = std::thread([&server] { server.listen_after_bind(); });
  // httplib's stop() is a no-op until its loop runs: return once it serves.
  const Deadline deadline = Deadline::after_seconds(10);
  while (!server.is_running()) {
    if (deadline.expired()) {
      server.stop();  // the owner joins *loop
      return unavailable(
          fmt::format("{} {}:{}: HTTP server did not start within 10 s", o.what, o.host, port));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return port;
}

}  // namespace kiln::serve
