// What the tcp transport adds to kiln/base/socket.h: peer endpoints as
// published in the store, connecting with retries (the peer may not listen
// yet), accepting with a deadline, and finding the local address that routes
// toward a host.
#pragma once

#include <cstdint>
#include <string>

#include "kiln/base/deadline.h"
#include "kiln/base/fd.h"
#include "kiln/base/socket.h"
#include "kiln/base/status.h"

namespace kiln::comm::transport::tcp {

using ::kiln::Fd;

struct Endpoint {
  std::string host;  // numeric address
  std::uint16_t port = 0;
  std::string to_string() const { return net::host_port(host, port); }
};

Result<Endpoint> parse_endpoint(const std::string& text);  // "10.0.0.1:4000"

// A non-blocking listener on host, any free port; returns it and its endpoint.
Result<std::pair<Fd, Endpoint>> listen_on(const std::string& host);

// Connects, retrying with backoff until the deadline (the peer may not
// listen yet). Returns a non-blocking socket with TCP_NODELAY.
Result<Fd> connect_to(const Endpoint& to, Deadline deadline);

// Accepts one connection before the deadline; the socket is non-blocking.
Result<Fd> accept_one(int listen_fd, Deadline deadline);

// The local address this host uses to reach `host` (no packet is sent).
Result<std::string> local_address_toward(const std::string& host);

// "host:port" of the remote end of a connected socket.
std::string peer_address(int fd);

}  // namespace kiln::comm::transport::tcp
