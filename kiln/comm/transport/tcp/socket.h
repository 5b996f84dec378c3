// Small socket helpers for the tcp transport and its bootstrap. Every call
// that can block takes a Deadline.
#pragma once

#include <netinet/in.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "kiln/base/deadline.h"
#include "kiln/base/status.h"

namespace kiln::comm::transport::tcp {

// An owned file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept;
  ~Fd();
  int get() const { return fd_; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  bool valid() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

struct Endpoint {
  std::string host;  // numeric IPv4
  std::uint16_t port = 0;
  std::string to_string() const { return host + ":" + std::to_string(port); }
};

Result<Endpoint> parse_endpoint(const std::string& text);  // "10.0.0.1:4000"

// Listens on host:port (port 0 = any free port); returns the socket and the
// bound endpoint.
Result<std::pair<Fd, Endpoint>> listen_on(const std::string& host, std::uint16_t port);

// Connects with retries until the deadline (the peer may not listen yet).
Result<Fd> connect_to(const Endpoint& to, Deadline deadline);

// Accepts one connection before the deadline.
Result<Fd> accept_one(int listen_fd, Deadline deadline);

// Blocking-style exact I/O on a socket, bounded by the deadline.
Status write_all(int fd, const void* data, std::size_t len, Deadline deadline);
Status read_all(int fd, void* data, std::size_t len, Deadline deadline);

Status set_nonblocking(int fd, bool on);
Status set_nodelay(int fd);

// The local address this host uses to reach `host` (no packet is sent).
Result<std::string> local_address_toward(const std::string& host);

// "host:port" of the remote end of a connected socket.
std::string peer_address(int fd);

}  // namespace kiln::comm::transport::tcp
