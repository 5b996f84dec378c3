#include "kiln/comm/transport/tcp/socket.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <cerrno>

#include <fmt/format.h>

#include "kiln/base/backoff.h"

namespace kiln::comm::transport::tcp {

Result<Endpoint> parse_endpoint(const std::string& text) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos) {
    return invalid_argument(fmt::format("endpoint {:?}: expected HOST:PORT", text));
  }
  int port = std::atoi(text.c_str() + colon + 1);
  if (port <= 0 || port > 65535) return invalid_argument(fmt::format("endpoint {:?}: bad port", text));
  std::string host = text.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return Endpoint{host, static_cast<std::uint16_t>(port)};
}

Result<std::pair<Fd, Endpoint>> listen_on(const std::string& host) {
  std::uint16_t port = 0;
  KILN_ASSIGN_OR_RETURN(Fd fd, net::listen_tcp(host, 0, 1024, &port));
  return std::pair{std::move(fd), Endpoint{host, port}};
}

Result<Fd> connect_to(const Endpoint& to, Deadline deadline) {
  Backoff backoff({.base = std::chrono::milliseconds(10), .cap = std::chrono::milliseconds(500)});
  Status last;
  while (true) {
    auto attempt = Deadline::after(std::chrono::seconds(5)).min(deadline);
    auto fd = net::connect_tcp(to.host, to.port, attempt);
    if (fd.is_ok()) return fd;
    last = fd.status();
    if (last.code() == Code::kNotFound || !backoff.sleep_before_retry(deadline)) break;
  }
  return Status(last.code() == Code::kNotFound ? Code::kNotFound : Code::kUnavailable,
                fmt::format("connect to {}: {} (gave up after {} attempts)", to.to_string(),
                            last.message(), backoff.attempts() + 1));
}

Result<Fd> accept_one(int listen_fd, Deadline deadline) {
  while (true) {
    pollfd p{listen_fd, POLLIN, 0};
    auto ms = deadline.remaining_ms();
    int rc = ::poll(&p, 1, ms > 1000 ? 1000 : static_cast<int>(ms));
    if (rc < 0 && errno != EINTR) return errno_status("poll listener", errno);
    if (rc > 0) {
      int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (fd >= 0) return Fd(fd);
      if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
        return errno_status("accept", errno);
      }
    }
    if (deadline.expired()) return deadline_exceeded("accept: no connection before the deadline");
  }
}

Result<std::string> local_address_toward(const std::string& host) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(9);
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    return invalid_argument(fmt::format("route toward {:?}: not a numeric IPv4 address", host));
  }
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
  sockaddr_storage a{};
  socklen_t len = sizeof(a);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) return "?";
  return net::format_address(a);
}

}  // namespace kiln::comm::transport::tcp
