// EventFront: an HTTP/1.1 server on one epoll thread, the front of a kiln
// serve replica (and of anything else that answers requests in batches).
//
// Note [One thread for the front]: cpp-httplib serves each keep-alive
// connection on a thread of its own, so every request costs the thread's
// wake-up, a hand-off to the batcher, the batcher's answer waking it again,
// and a write: on this 2-core host ~0.3 ms a request, as much as the CNN's
// whole forward pass for a batch of one, and the cost batching cannot
// amortise. Here one thread reads every ready connection's requests per
// wake-up (pipelined ones too) and hands the handler all of them at once,
// so a batcher gets a whole batch in one submission; the batch's answers
// come back in one hand-off (one eventfd write) and go out with one writev
// per connection.
//
// Per connection: keep-alive (HTTP/1.1, or 1.0 asking for it); pipelined
// requests answered in order whatever order their answers come in; a
// malformed request answered with its 4xx/5xx naming the problem (after the
// answers to the requests before it), then the connection closed; a client
// that stalls mid-request (read_timeout, answered 408), does not take its
// answers (write_timeout) or idles (idle_timeout) is disconnected.
//
// stop(): takes what the kernel already holds (connections in the backlog,
// bytes in every socket), then stops accepting and reading, writes the
// answer to every request read (the handler must still answer them; each
// connection's last answer says Connection: close), closes. Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "kiln/base/deadline.h"
#include "kiln/base/fd.h"
#include "kiln/base/status.h"
#include "kiln/serve/request_reader.h"

namespace kiln::serve {

// Which request an answer is for: its connection and its place there.
struct RequestTicket {
  std::uint64_t conn = 0;
  std::uint64_t seq = 0;
};

struct IncomingRequest {
  RequestTicket ticket;
  HttpRequest request;
  Clock::time_point received;  // when the loop read its last byte
};

struct HttpAnswer {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  int retry_after_s = -1;  // >= 0: a Retry-After header (503)
};

// The answer to a request that none of a server's routes took: 405 naming
// the method to use for one of the serving paths (POST /v1/predict, GET
// /healthz, /readyz, /metrics), else 404 listing them. The replica and the
// router expose the same paths.
HttpAnswer unrouted_answer(const HttpRequest& r);

// Note [Listen backlog]: a load generator or a router opens tens of
// keep-alive connections at once. A short accept queue (cpp-httplib's is 5)
// overflows; Linux then drops the SYN or the handshake's ACK
// (tcp_abort_on_overflow = 0), the client retransmits a second later (a 1 s
// latency spike), and when the SYN queue is full too a syncookie that fails
// validation is answered with a reset, which the client sees only after it
// sent its request. net.core.somaxconn caps what listen() asks for.
inline constexpr int kListenBacklog = 4096;

struct EventFrontOptions {
  std::string host = "127.0.0.1";
  int port = 0;                // 0: any free port
  std::string what = "serve";  // names this front in errors and logs
  int backlog = kListenBacklog;
  RequestLimits limits;
  // A request begun and not complete this long after its last byte: 408.
  std::chrono::milliseconds read_timeout{10000};
  // Answers the client does not take (no write progress) this long: closed.
  std::chrono::milliseconds write_timeout{10000};
  // A keep-alive connection with nothing outstanding this long: closed.
  std::chrono::milliseconds idle_timeout{60000};
  // Requests a connection may have outstanding before the front stops
  // reading from it until answers go out (a client that pipelines without
  // reading its answers cannot grow the front's memory without bound).
  std::size_t max_pipelined = 1024;
  // The loop thread's CPUs (empty: the scheduler's choice).
  std::vector<int> cpus;
};

struct EventFrontCounters {
  std::atomic<std::uint64_t> connections{0};  // accepted
  std::atomic<std::uint64_t> requests{0};     // read complete
  std::atomic<std::uint64_t> malformed{0};    // answered 4xx/5xx by the front itself
  std::atomic<std::uint64_t> timed_out{0};    // connections closed by a timeout
  std::atomic<std::uint64_t> wakeups{0};      // epoll_wait returns with work
};

class EventFront {
 public:
  // Called on the loop thread with every request read in one wake-up, in
  // the order read. Each request must get exactly one answer(), from any
  // thread, now or later.
  using Handler = std::function<void(std::vector<IncomingRequest>& requests)>;

  // Binds host:port and serves. Unavailable naming host:port if it cannot
  // bind. A handler that calls answer() on the returned front must use
  // bind() then serve() instead: the loop may call it before start returns.
  static Result<std::unique_ptr<EventFront>> start(const EventFrontOptions& options,
                                                   Handler handler);
  // start() in two steps: bind() binds (no request is read yet), so the
  // owner can keep the pointer before serve() starts the loop.
  static Result<std::unique_ptr<EventFront>> bind(const EventFrontOptions& options,
                                                  Handler handler);
  void serve();
  ~EventFront();  // stop()
  EventFront(const EventFront&) = delete;
  EventFront& operator=(const EventFront&) = delete;

  int port() const { return port_; }
  const EventFrontCounters& counters() const { return counters_; }

  // Answers; one wake-up of the loop for the whole vector. An answer for a
  // connection that has closed meanwhile is discarded.
  void answer(std::vector<std::pair<RequestTicket, HttpAnswer>> answers);
  void answer(RequestTicket ticket, HttpAnswer answer);

  // Reads what the kernel holds once more, stops accepting and reading,
  // writes the answers to the requests read, closes every connection
  // (shutdown, then close) and joins the loop; connections still
  // waiting for answers after `grace` are closed without them. Idempotent.
  void stop(std::chrono::milliseconds grace = std::chrono::seconds(30));

 private:
  class Loop;
  EventFront() = default;

  int port_ = 0;
  EventFrontCounters counters_;
  std::unique_ptr<Loop> loop_;
  std::thread thread_;  // job: the event loop
  std::once_flag stopped_;
};

// "HTTP/1.1 <status> <reason>\r\n...headers...\r\n\r\n<body>"; `close` adds
// "Connection: close".
std::string serialize_answer(const HttpAnswer& answer, bool close);

}  // namespace kiln::serve
