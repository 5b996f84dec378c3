#include "kiln/elastic/script_master.h"

#include <fmt/format.h>

#include <charconv>

#include "kiln/base/socket.h"

namespace kiln::elastic {

Result<int> free_tcp_port() {
  std::uint16_t port = 0;
  auto fd = net::listen_tcp("0.0.0.0", 0, 1, &port);
  if (!fd.is_ok()) return fd.status().with_context("finding a free port for MASTER_PORT");
  return static_cast<int>(port);  // the socket closes here, leaving the port free
}

Result<HostPort> agree_script_master(store::Store& store, const std::string& key, bool leader,
                                     const std::string& leader_host, Deadline deadline) {
  if (leader) {
    KILN_ASSIGN_OR_RETURN(int port, free_tcp_port());
    KILN_RETURN_IF_ERROR(store.set(key, fmt::format("{}:{}", leader_host, port))
                             .with_context("publishing MASTER_ADDR:MASTER_PORT"));
    return HostPort{leader_host, port};
  }
  KILN_ASSIGN_OR_RETURN(std::string v, store.get(key, deadline));
  auto colon = v.rfind(':');
  int port = 0;
  if (colon != std::string::npos && colon > 0) {
    const char* end = v.data() + v.size();
    auto [p, ec] = std::from_chars(v.data() + colon + 1, end, port);
    if (ec != std::errc() || p != end) port = 0;
  }
  if (port <= 0 || port > 65535) {
    return data_loss(fmt::format("{:?} holds {:?}, not HOST:PORT", key, v));
  }
  return HostPort{v.substr(0, colon), port};
}

}  // namespace kiln::elastic
