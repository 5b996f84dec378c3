// Socket helpers shared by the TcpStore and the comm tcp transport:
// listening, connecting and deadline-bounded blocking I/O on non-blocking
// sockets. Errors describe the cause only; callers add the operation and peer.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"
#include "kiln/base/fd.h"

namespace kiln::net {

// "10.0.0.1:29500" or "[::1]:29500".
std::string format_address(const sockaddr_storage& addr);
std::string host_port(std::string_view host, std::uint16_t port);

Status set_nonblocking(int fd);
// TCP_NODELAY: requests and replies are small and latency-bound.
Status set_nodelay(int fd);

// A non-blocking listening socket on host:port (SO_REUSEADDR; port 0 picks a
// free one, reported in *bound_port). An empty host or "0.0.0.0" binds every
// IPv4 address, "::" every IPv6 one.
Result<Fd> listen_tcp(const std::string& host, std::uint16_t port, int backlog,
                      std::uint16_t* bound_port);

// One connection attempt to every address `host` resolves to, each bounded
// by the deadline. Returns a non-blocking socket with TCP_NODELAY set.
// Unavailable (refused, unreachable), DeadlineExceeded, NotFound (host does
// not resolve).
Result<Fd> connect_tcp(const std::string& host, std::uint16_t port, Deadline deadline);

// Writes all of data, polling while the socket buffer is full.
Status send_all(int fd, std::string_view data, Deadline deadline);
// Reads exactly n bytes. Unavailable "connection closed by peer" on EOF.
Status recv_exact(int fd, char* buf, std::size_t n, Deadline deadline);

}  // namespace kiln::net
