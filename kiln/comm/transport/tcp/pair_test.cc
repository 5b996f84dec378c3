// The tcp transport's connections and KILN_TCP_CONGESTION (Note [Congestion
// control of a collective's connections]).
#include "kiln/comm/transport/tcp/pair.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <sys/socket.h>

#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "kiln/comm/transport/tcp/socket.h"

namespace kiln::comm::transport::tcp {
namespace {

// A TcpPair over a fresh loopback connection; returns its congestion control.
std::string congestion_of_new_pair() {
  auto listener = listen_on("127.0.0.1");
  EXPECT_TRUE(listener.is_ok()) << listener.status().to_string();
  auto client = connect_to(listener->second, Deadline::after(std::chrono::seconds(10)));
  EXPECT_TRUE(client.is_ok()) << client.status().to_string();
  auto server = accept_one(listener->first.get(), Deadline::after(std::chrono::seconds(10)));
  EXPECT_TRUE(server.is_ok()) << server.status().to_string();
  Doorbell bell;
  TcpPair pair(1, "rank 1 (test)", std::move(*client), &bell);
  char name[32] = {};
  socklen_t len = sizeof(name);
  EXPECT_EQ(::getsockopt(pair.fd(), IPPROTO_TCP, TCP_CONGESTION, name, &len), 0);
  return name;
}

std::string host_default() {
  std::ifstream f("/proc/sys/net/ipv4/tcp_congestion_control");
  std::string name;
  f >> name;
  return name;
}

TEST(TcpPair, UsesCubicUnlessToldOtherwise) {
  ::unsetenv("KILN_TCP_CONGESTION");
  EXPECT_EQ(congestion_of_new_pair(), "cubic");
  ::setenv("KILN_TCP_CONGESTION", "reno", 1);
  EXPECT_EQ(congestion_of_new_pair(), "reno");
  ::setenv("KILN_TCP_CONGESTION", "system", 1);
  EXPECT_EQ(congestion_of_new_pair(), host_default());
  // One the host does not have: a warning, and the connection still works
  // with the host's default.
  ::setenv("KILN_TCP_CONGESTION", "no-such-algorithm", 1);
  EXPECT_EQ(congestion_of_new_pair(), host_default());
  ::unsetenv("KILN_TCP_CONGESTION");
}

}  // namespace
}  // namespace kiln::comm::transport::tcp
