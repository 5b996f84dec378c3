// Connection: one client socket to a TcpStoreServer, past the hello. Used by
// one call at a time (TcpStore pools them); not thread-safe by itself.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"
#include "kiln/store/tcp/protocol.h"
#include "kiln/base/socket.h"

namespace kiln::store::tcp {

class Connection {
 public:
  // Connects once (no retry), exchanges hellos and authenticates with
  // `token` (kiln/base/auth/handshake.h; empty: the server must not require
  // one), all within the deadline. Unavailable/DeadlineExceeded/NotFound
  // from connecting; DataLoss or FailedPrecondition when the peer is not a
  // compatible store server, refuses our token or cannot prove it holds it.
  static Result<std::unique_ptr<Connection>> open(const std::string& host, std::uint16_t port,
                                                  const std::string& token, Deadline deadline);

  // Sends `request` and returns the reply with its id. A transport error or
  // timeout leaves the connection unusable (a late reply could still come):
  // the caller must drop it. Reply errors (Response::status) do not.
  Result<Response> call(const Request& request, Deadline deadline);

  // False if the server closed or reset this idle connection (checked
  // without blocking), e.g. because it restarted since the last call.
  bool idle_and_open() const;

 private:
  explicit Connection(Fd fd) : fd_(std::move(fd)) {}

  Fd fd_;
};

}  // namespace kiln::store::tcp
