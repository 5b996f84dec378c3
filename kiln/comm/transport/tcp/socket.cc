#include "kiln/comm/transport/tcp/socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include <fmt/format.h>

#include "kiln/base/backoff.h"

namespace kiln::comm::transport::tcp {

Fd& Fd::operator=(Fd&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.release();
  }
  return *this;
}

Fd::~Fd() {
  if (fd_ >= 0) ::close(fd_);
}

namespace {

Result<sockaddr_in> resolve(const std::string& host, std::uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  if (host.empty() || host == "0.0.0.0" || host == "*") {
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    return addr;
  }
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) == 1) return addr;
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc != 0 || res == nullptr) {
    return unavailable(fmt::format("resolve host {:?}: {}", host, gai_strerror(rc)));
  }
  addr.sin_addr = reinterpret_cast<sockaddr_in*>(res->ai_addr)->sin_addr;
  freeaddrinfo(res);
  return addr;
}

int poll_ms(const Deadline& d) {
  auto ms = d.remaining_ms();
  return ms > 1000 ? 1000 : static_cast<int>(ms);
}

}  // namespace

Result<Endpoint> parse_endpoint(const std::string& text) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos) return invalid_argument(fmt::format("endpoint {:?}: expected HOST:PORT", text));
  int port = std::atoi(text.c_str() + colon + 1);
  if (port <= 0 || port > 65535) return invalid_argument(fmt::format("endpoint {:?}: bad port", text));
  return Endpoint{text.substr(0, colon), static_cast<std::uint16_t>(port)};
}

Result<std::pair<Fd, Endpoint>> listen_on(const std::string& host, std::uint16_t port) {
  KILN_ASSIGN_OR_RETURN(sockaddr_in addr, resolve(host, port));
  Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return errno_status("socket", errno);
  int one = 1;
  setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return errno_status(fmt::format("bind {}:{}", host, port), errno);
  }
  if (::listen(fd.get(), 1024) != 0) return errno_status("listen", errno);
  sockaddr_in bound{};
  socklen_t len = sizeof(bound);
  getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &len);
  char ip[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &bound.sin_addr, ip, sizeof(ip));
  return std::pair{std::move(fd), Endpoint{ip, ntohs(bound.sin_port)}};
}

Result<Fd> connect_to(const Endpoint& to, Deadline deadline) {
  KILN_ASSIGN_OR_RETURN(sockaddr_in addr, resolve(to.host, to.port));
  Backoff backoff({.base = std::chrono::milliseconds(10), .cap = std::chrono::milliseconds(500)});
  Status last;
  while (true) {
    Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd.valid()) return errno_status("socket", errno);
    int rc = ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd.get(), POLLOUT, 0};
      while ((rc = ::poll(&p, 1, poll_ms(deadline))) == 0 && !deadline.expired()) {
      }
      if (rc > 0) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
        rc = err == 0 ? 0 : -1;
        errno = err;
      } else if (rc == 0) {
        rc = -1;
        errno = ETIMEDOUT;
      }
    }
    if (rc == 0) {
      KILN_RETURN_IF_ERROR(set_nonblocking(fd.get(), false));
      return fd;
    }
    last = errno_status(fmt::format("connect to {}", to.to_string()), errno);
    if (!backoff.sleep_before_retry(deadline)) break;
  }
  return Status(Code::kUnavailable, last.message() + " (gave up at the deadline)");
}

Result<Fd> accept_one(int listen_fd, Deadline deadline) {
  while (true) {
    pollfd p{listen_fd, POLLIN, 0};
    int rc = ::poll(&p, 1, poll_ms(deadline));
    if (rc < 0 && errno != EINTR) return errno_status("poll listener", errno);
    if (rc > 0) {
      int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd >= 0) return Fd(fd);
      if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
        return errno_status("accept", errno);
      }
    }
    if (deadline.expired()) return deadline_exceeded("accept: no connection before the deadline");
  }
}

Status write_all(int fd, const void* data, std::size_t len, Deadline deadline) {
  const char* p = static_cast<const char*>(data);
  while (len > 0) {
    ssize_t n = ::send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      p += n;
      len -= static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EINTR) return errno_status("send", errno);
    pollfd pf{fd, POLLOUT, 0};
    ::poll(&pf, 1, poll_ms(deadline));
    if (deadline.expired()) return deadline_exceeded("send: deadline exceeded");
  }
  return Status::ok();
}

Status read_all(int fd, void* data, std::size_t len, Deadline deadline) {
  char* p = static_cast<char*>(data);
  while (len > 0) {
    ssize_t n = ::recv(fd, p, len, MSG_DONTWAIT);
    if (n > 0) {
      p += n;
      len -= static_cast<std::size_t>(n);
      continue;
    }
    if (n == 0) return unavailable("connection closed by the peer");
    if (errno != EAGAIN && errno != EINTR) return errno_status("recv", errno);
    pollfd pf{fd, POLLIN, 0};
    ::poll(&pf, 1, poll_ms(deadline));
    if (deadline.expired()) return deadline_exceeded("recv: deadline exceeded");
  }
  return Status::ok();
}

Status set_nonblocking(int fd, bool on) {
  int flags = fcntl(fd, F_GETFL, 0);
  if (flags < 0) return errno_status("fcntl(F_GETFL)", errno);
  flags = on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK);
  if (fcntl(fd, F_SETFL, flags) != 0) return errno_status("fcntl(F_SETFL)", errno);
  return Status::ok();
}

Status set_nodelay(int fd) {
  int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) {
    return errno_status("setsockopt(TCP_NODELAY)", errno);
  }
  return Status::ok();
}

Result<std::string> local_address_toward(const std::string& host) {
  KILN_ASSIGN_OR_RETURN(sockaddr_in addr, resolve(host, 9));
  Fd fd(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return errno_status("socket", errno);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return errno_status(fmt::format("route toward {}", host), errno);
  }
  sockaddr_in local{};
  socklen_t len = sizeof(local);
  getsockname(fd.get(), reinterpret_cast<sockaddr*>(&local), &len);
  char ip[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &local.sin_addr, ip, sizeof(ip));
  return std::string(ip);
}

std::string peer_address(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof(a);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) return "?";
  char ip[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &a.sin_addr, ip, sizeof(ip));
  return fmt::format("{}:{}", ip, ntohs(a.sin_port));
}

}  // namespace kiln::comm::transport::tcp
