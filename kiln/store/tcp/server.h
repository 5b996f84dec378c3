// TcpStoreServer: serves the store to TcpStore clients. Embedded in rank 0 or
// run alone by `kiln store serve`.
//
// One thread (the "store server" loop) owns every socket and all state: it
// accepts, reads requests, answers them and parks gets/waits on missing keys
// until the key appears or the request's timeout passes (see ServerState).
// Sockets are non-blocking and multiplexed with epoll, so a slow or stuck
// client never delays another. A peer that breaks the protocol (bad hello,
// oversized or malformed frame) has its connection closed and a warning
// logged naming its address; the server keeps serving everyone else.
//
// With a job token (options.token) every connection must pass the HMAC
// challenge-response of kiln/base/auth/handshake.h right after the hello,
// before any request is read; a client that fails it, or does not finish it
// within options.handshake_timeout, is refused and logged with its address.
//
//   TcpStoreServer server({.token = job_token});
//   KILN_RETURN_IF_ERROR(server.start("10.0.0.1", 0));
//   auto store = TcpStore::connect("10.0.0.1", server.port(), {});
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "kiln/base/status.h"
#include "kiln/store/tcp/protocol.h"

namespace kiln::store::tcp {

struct TcpStoreServerOptions {
  // The job token clients must prove they hold; empty: no authentication
  // (tests, and jobs run without a launcher).
  std::string token;
  // A connection that has not finished the hello and authentication by then
  // is closed, so idle unauthenticated sockets cannot pile up.
  std::chrono::milliseconds handshake_timeout{std::chrono::seconds(10)};
  int backlog = 1024;
  std::uint32_t max_frame_bytes = kMaxFrameBytes;
  // A client that stops reading gets disconnected once this much output
  // waits for it.
  std::size_t max_pending_output_bytes = std::size_t{256} << 20;
};

class TcpStoreServer {
 public:
  explicit TcpStoreServer(TcpStoreServerOptions options = {});
  // Calls stop().
  ~TcpStoreServer();
  TcpStoreServer(const TcpStoreServer&) = delete;
  TcpStoreServer& operator=(const TcpStoreServer&) = delete;

  // Binds host:port (port 0 picks a free one; see port()) and starts the
  // loop thread. Bind the address clients are told to use (MASTER_ADDR),
  // not 0.0.0.0, so the store is not open on every interface. Call once. Errors name the address: Unavailable when the
  // port is in use, NotFound when the host does not resolve.
  Status start(const std::string& host, std::uint16_t port);

  // The bound port; 0 before start().
  std::uint16_t port() const { return port_; }
  const std::string& host() const { return host_; }

  // Stops the loop and closes every connection, so clients with requests in
  // flight see the connection close at once. Blocks until the thread exits.
  // Idempotent; any thread but the loop's own.
  void stop();

  // Snapshots for tests and diagnostics; any thread.
  std::size_t parked_requests() const { return parked_.load(); }
  std::size_t connections() const { return connections_.load(); }
  // Connections refused for failing authentication, since start().
  std::size_t refused() const { return refused_.load(); }

 private:
  class Loop;

  TcpStoreServerOptions options_;
  std::string host_;
  std::uint16_t port_ = 0;
  std::unique_ptr<Loop> loop_;
  std::thread thread_;
  std::atomic<std::size_t> parked_{0};
  std::atomic<std::size_t> connections_{0};
  std::atomic<std::size_t> refused_{0};
};

}  // namespace kiln::store::tcp
