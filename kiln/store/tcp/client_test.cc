#include "kiln/store/tcp/client.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <thread>

#include "kiln/store/tcp/server.h"
#include "kiln/base/socket.h"
#include "kiln/store/tcp/test_util.h"

namespace kiln::store::tcp {

using namespace ::kiln::net;  // socket helpers (kiln/base/socket.h)
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// A loopback port that refuses connections: bound, never listening.
struct RefusingPort {
  Fd fd{::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)};
  std::uint16_t port = 0;
  RefusingPort() {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    socklen_t len = sizeof(addr);
    ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len);
    port = ntohs(addr.sin_port);
  }
};

TEST(TcpStore, UnreachableServerFailsAfterTheConnectTimeout) {
  RefusingPort nobody;
  auto start = Clock::now();
  auto store = TcpStore::connect("127.0.0.1", nobody.port, {.connect_timeout = milliseconds(300)});
  auto took = Clock::now() - start;
  ASSERT_FALSE(store.is_ok());
  EXPECT_EQ(store.status().code(), Code::kUnavailable) << store.status().to_string();
  const std::string& msg = store.status().message();
  EXPECT_NE(msg.find(fmt::format("127.0.0.1:{}", nobody.port)), std::string::npos) << msg;
  EXPECT_NE(msg.find("unreachable after"), std::string::npos) << msg;
  EXPECT_NE(msg.find("refused"), std::string::npos) << msg;
  EXPECT_GE(took, milliseconds(290));
  EXPECT_LT(took, seconds(5));
}

TEST(TcpStore, ConnectRetriesUntilTheServerStarts) {
  RefusingPort reserved;
  std::uint16_t port = reserved.port;
  Result<std::unique_ptr<TcpStore>> store = internal_error("not run");
  std::thread client(
      [&] { store = TcpStore::connect("127.0.0.1", port, {.connect_timeout = seconds(20)}); });
  // Not synchronisation: the test passes however the two race; the pause
  // only makes it likely that the first attempts are refused.
  std::this_thread::sleep_for(milliseconds(200));
  reserved.fd.reset();
  TcpStoreServer server;
  ASSERT_TRUE(server.start("127.0.0.1", port).is_ok());
  client.join();
  ASSERT_TRUE(store.is_ok()) << store.status().to_string();
  EXPECT_TRUE((*store)->set("k", "v").is_ok());
}

TEST(TcpStore, ReconnectsAfterTheServerRestarts) {
  auto server = std::make_unique<TcpStoreServer>();
  ASSERT_TRUE(server->start("127.0.0.1", 0).is_ok());
  std::uint16_t port = server->port();
  auto store = TcpStore::connect("127.0.0.1", port, {.connect_timeout = seconds(10)});
  ASSERT_TRUE(store.is_ok());
  ASSERT_TRUE((*store)->set("k", "1").is_ok());
  server = std::make_unique<TcpStoreServer>();            // the old one stops first
  ASSERT_TRUE(server->start("127.0.0.1", port).is_ok());  // SO_REUSEADDR
  // The pooled connection is dead; the call notices before sending and
  // opens a new one. The new server starts empty.
  EXPECT_EQ(*(*store)->add("k", 1), 1);
}

TEST(TcpStore, AParkedGetDoesNotBlockOtherCallsOnTheSameClient) {
  TcpStoreServer server;
  ASSERT_TRUE(server.start("127.0.0.1", 0).is_ok());
  auto store = TcpStore::connect("127.0.0.1", server.port());
  ASSERT_TRUE(store.is_ok());
  Result<std::string> got = internal_error("not run");
  std::thread waiter([&] { got = (*store)->get("k", Deadline::after_seconds(30)); });
  ASSERT_TRUE(eventually([&] { return server.parked_requests() == 1; }));
  ASSERT_TRUE((*store)->set("k", "v").is_ok());
  waiter.join();
  EXPECT_EQ(got.is_ok() ? *got : got.status().to_string(), "v");
}

TEST(TcpStore, ErrorsNameTheOperationKeyAndServer) {
  TcpStoreServer server;
  ASSERT_TRUE(server.start("127.0.0.1", 0).is_ok());
  auto store = TcpStore::connect("127.0.0.1", server.port());
  ASSERT_TRUE(store.is_ok());
  ASSERT_TRUE((*store)->set("word", "hello").is_ok());
  auto r = (*store)->add("word", 1);
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(r.status().message().rfind(
                fmt::format("store add 'word' on 127.0.0.1:{}: ", server.port()), 0),
            0u)
      << r.status().message();
  auto g = (*store)->get("rank/3", Deadline::after_ms(100));
  EXPECT_EQ(g.status().code(), Code::kDeadlineExceeded);
  EXPECT_EQ(g.status().message().rfind(
                fmt::format("store get 'rank/3' on 127.0.0.1:{}: deadline exceeded after ",
                            server.port()),
                0),
            0u)
      << g.status().message();
}

TEST(TcpStore, APeerThatIsNotAStoreServerIsRejectedWithoutRetrying) {
  std::uint16_t port = 0;
  auto listener = listen_tcp("127.0.0.1", 0, 4, &port);
  ASSERT_TRUE(listener.is_ok());
  std::thread fake([&] {
    pollfd p{listener->get(), POLLIN, 0};
    if (::poll(&p, 1, 10000) != 1) return;
    Fd conn(::accept(listener->get(), nullptr, nullptr));
    (void)send_all(conn.get(), "HTTP/1.1 400 Bad Request\r\n\r\n", Deadline::after_seconds(5));
  });
  auto start = Clock::now();
  auto store = TcpStore::connect("127.0.0.1", port, {.connect_timeout = seconds(20)});
  fake.join();
  ASSERT_FALSE(store.is_ok());
  EXPECT_EQ(store.status().code(), Code::kDataLoss) << store.status().to_string();
  EXPECT_NE(store.status().message().find("not a Kiln store peer"), std::string::npos);
  EXPECT_LT(Clock::now() - start, seconds(10));
}

}  // namespace
}  // namespace kiln::store::tcp
