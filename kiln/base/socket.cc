#include "kiln/base/socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>

#include <cerrno>
#include <climits>
#include <memory>

namespace kiln::net {
namespace {

struct AddrInfoDeleter {
  void operator()(addrinfo* ai) const { ::freeaddrinfo(ai); }
};
using AddrInfoPtr = std::unique_ptr<addrinfo, AddrInfoDeleter>;

Result<AddrInfoPtr> resolve(const std::string& host, std::uint16_t port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo* out = nullptr;
  std::string service = std::to_string(port);
  const char* node = host.empty() ? nullptr : host.c_str();
  int rc = ::getaddrinfo(node, service.c_str(), &hints, &out);
  if (rc != 0) {
    return not_found(fmt::format("resolve {}: {}", host_port(host, port), ::gai_strerror(rc)));
  }
  return AddrInfoPtr(out);
}

int poll_timeout_ms(Deadline deadline) {
  if (deadline.is_never()) return -1;
  // Rounded up: a sub-millisecond remainder still waits instead of spinning.
  return static_cast<int>(std::min<std::int64_t>(deadline.remaining_ms(), INT_MAX));
}

// Waits for `events` on fd. DeadlineExceeded when the deadline passes first.
Status wait_for(int fd, short events, Deadline deadline) {
  while (true) {
    pollfd p{fd, events, 0};
    int rc = ::poll(&p, 1, poll_timeout_ms(deadline));
    if (rc > 0) return Status::ok();  // ready, or an error the next syscall reports
    if (rc == 0) return deadline_exceeded("deadline exceeded");
    if (errno != EINTR) return errno_status("poll", errno);
  }
}

}  // namespace

std::string format_address(const sockaddr_storage& addr) {
  char host[INET6_ADDRSTRLEN] = {};
  if (addr.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
    ::inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    return fmt::format("{}:{}", host, ntohs(a->sin_port));
  }
  if (addr.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
    ::inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    return fmt::format("[{}]:{}", host, ntohs(a->sin6_port));
  }
  return fmt::format("<address family {}>", addr.ss_family);
}

std::string host_port(std::string_view host, std::uint16_t port) {
  if (host.find(':') != std::string_view::npos) return fmt::format("[{}]:{}", host, port);
  return fmt::format("{}:{}", host, port);
}

Status set_nonblocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL, 0);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    return errno_status("fcntl O_NONBLOCK", errno);
  }
  return Status::ok();
}

Status set_nodelay(int fd) {
  int one = 1;
  if (::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) {
    return errno_status("setsockopt TCP_NODELAY", errno);
  }
  return Status::ok();
}

Result<Fd> listen_tcp(const std::string& host, std::uint16_t port, int backlog,
                      std::uint16_t* bound_port) {
  KILN_ASSIGN_OR_RETURN(AddrInfoPtr addrs, resolve(host.empty() ? "0.0.0.0" : host, port, true));
  Status last = unavailable(fmt::format("no address for {}", host_port(host, port)));
  for (addrinfo* ai = addrs.get(); ai != nullptr; ai = ai->ai_next) {
    Fd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
    if (!fd.valid()) {
      last = errno_status("socket", errno);
      continue;
    }
    // A restarted server can rebind while old connections sit in TIME_WAIT.
    int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      int err = errno;
      last = errno_status(fmt::format("bind {}", host_port(host, port)), err);
      // A port still held by an old server frees up: worth a retry, not a bug.
      if (err == EADDRINUSE) last = unavailable(last.message() + " (is another server running?)");
      continue;
    }
    if (::listen(fd.get(), backlog) != 0) {
      last = errno_status(fmt::format("listen {}", host_port(host, port)), errno);
      continue;
    }
    sockaddr_storage local{};
    socklen_t len = sizeof(local);
    if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&local), &len) != 0) {
      return errno_status("getsockname", errno);
    }
    *bound_port = local.ss_family == AF_INET6
                      ? ntohs(reinterpret_cast<sockaddr_in6*>(&local)->sin6_port)
                      : ntohs(reinterpret_cast<sockaddr_in*>(&local)->sin_port);
    return fd;
  }
  return last;
}

Result<Fd> connect_tcp(const std::string& host, std::uint16_t port, Deadline deadline) {
  KILN_ASSIGN_OR_RETURN(AddrInfoPtr addrs, resolve(host, port, false));
  Status last = unavailable("no address");
  for (addrinfo* ai = addrs.get(); ai != nullptr; ai = ai->ai_next) {
    Fd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol));
    if (!fd.valid()) {
      last = errno_status("socket", errno);
      continue;
    }
    if (::connect(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) {
      if (errno != EINPROGRESS) {
        last = errno_status("connect", errno);
        continue;
      }
      last = wait_for(fd.get(), POLLOUT, deadline);
      if (!last.is_ok()) continue;
      int err = 0;
      socklen_t len = sizeof(err);
      ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
      if (err != 0) {
        last = errno_status("connect", err);
        continue;
      }
    }
    KILN_RETURN_IF_ERROR(set_nodelay(fd.get()));
    return fd;
  }
  return last;
}

Status send_all(int fd, std::string_view data, Deadline deadline) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n >= 0) {
      data.remove_prefix(static_cast<std::size_t>(n));
      continue;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return errno_status("send", errno);
    KILN_RETURN_IF_ERROR(wait_for(fd, POLLOUT, deadline));
  }
  return Status::ok();
}

Status recv_exact(int fd, char* buf, std::size_t n, Deadline deadline) {
  std::size_t got = 0;
  while (got < n) {
    ssize_t r = ::recv(fd, buf + got, n - got, 0);
    if (r > 0) {
      got += static_cast<std::size_t>(r);
      continue;
    }
    if (r == 0) return unavailable("connection closed by peer");
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return errno_status("recv", errno);
    KILN_RETURN_IF_ERROR(wait_for(fd, POLLIN, deadline));
  }
  return Status::ok();
}

}  // namespace kiln::net
