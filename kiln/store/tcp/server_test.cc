#include "kiln/store/tcp/server.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <random>
#include <thread>

#include "kiln/base/auth/handshake.h"
#include "kiln/store/tcp/client.h"
#include "kiln/base/socket.h"
#include "kiln/store/tcp/test_util.h"

namespace kiln::store::tcp {

using namespace ::kiln::net;  // socket helpers (kiln/base/socket.h)
namespace {

using std::chrono::seconds;

std::unique_ptr<TcpStore> connect_client(std::uint16_t port) {
  auto s = TcpStore::connect("127.0.0.1", port, {.connect_timeout = seconds(5)});
  EXPECT_TRUE(s.is_ok()) << s.status().to_string();
  return s.is_ok() ? std::move(s).value() : nullptr;
}

Fd raw_connect(std::uint16_t port) {
  auto fd = connect_tcp("127.0.0.1", port, Deadline::after_seconds(5));
  EXPECT_TRUE(fd.is_ok()) << fd.status().to_string();
  return fd.is_ok() ? std::move(fd).value() : Fd();
}

// A raw connection past the hello and (open-mode) authentication: what
// follows goes straight to the frame parser.
Fd raw_open(std::uint16_t port) {
  Fd raw = raw_connect(port);
  EXPECT_TRUE(send_all(raw.get(), encode_hello(), Deadline::after_seconds(5)).is_ok());
  std::string hello(kHelloBytes + auth::kChallengeBytes, '\0');
  EXPECT_TRUE(
      recv_exact(raw.get(), hello.data(), hello.size(), Deadline::after_seconds(5)).is_ok());
  EXPECT_TRUE(check_hello(hello.substr(0, kHelloBytes)).is_ok());
  auth::Initiator open("", "store");
  auto proof = open.answer(hello.substr(kHelloBytes));
  EXPECT_TRUE(proof.is_ok()) << proof.status().to_string();
  EXPECT_TRUE(send_all(raw.get(), *proof, Deadline::after_seconds(5)).is_ok());
  std::string verdict(auth::kVerdictBytes, '\0');
  EXPECT_TRUE(
      recv_exact(raw.get(), verdict.data(), verdict.size(), Deadline::after_seconds(5)).is_ok());
  EXPECT_TRUE(open.check_verdict(verdict).is_ok());
  return raw;
}

// True once the server has closed `fd` (EOF or reset) within 5 s.
bool closed_by_server(int fd) {
  char buf[4096];
  Deadline deadline = Deadline::after_seconds(5);
  while (true) {
    Status s = recv_exact(fd, buf, sizeof(buf), deadline);
    if (s.code() == Code::kUnavailable) return true;  // EOF or ECONNRESET
    if (!s.is_ok()) return false;                     // deadline: still open
  }
}

class TcpStoreServerTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(server_.start("127.0.0.1", 0).is_ok()); }
  std::string address() const { return fmt::format("127.0.0.1:{}", server_.port()); }

  LogCapture logs_;  // constructed before the server starts logging
  TcpStoreServer server_;
};

TEST_F(TcpStoreServerTest, GarbageStreamIsRejectedAndOthersAreStillServed) {
  auto client = connect_client(server_.port());
  ASSERT_TRUE(client->set("before", "1").is_ok());

  Fd raw = raw_connect(server_.port());
  std::mt19937 rng(1234);
  std::string garbage(4096, '\0');
  for (char& c : garbage) c = static_cast<char>(rng());
  ASSERT_FALSE(check_hello(garbage.substr(0, kHelloBytes)).is_ok());
  ASSERT_TRUE(send_all(raw.get(), garbage, Deadline::after_seconds(5)).is_ok());
  EXPECT_TRUE(closed_by_server(raw.get()));

  EXPECT_EQ(*client->get("before", Deadline::after_seconds(5)), "1");
  auto fresh = connect_client(server_.port());
  EXPECT_EQ(*fresh->add("after", 2), 2);
  server_.stop();
  EXPECT_NE(logs_.text().find("closing connection from 127.0.0.1:"), std::string::npos)
      << logs_.text();
  EXPECT_NE(logs_.text().find("magic"), std::string::npos) << logs_.text();
}

TEST_F(TcpStoreServerTest, HugeLengthPrefixIsRejected) {
  Fd raw = raw_open(server_.port());
  ASSERT_TRUE(send_all(raw.get(),
                       std::string("\xff\xff\xff\xff"
                                   "abcdef",
                                   10),
                       Deadline::after_seconds(5))
                  .is_ok());
  EXPECT_TRUE(closed_by_server(raw.get()));

  auto client = connect_client(server_.port());
  EXPECT_TRUE(client->set("still", "serving").is_ok());
  server_.stop();
  EXPECT_NE(logs_.text().find("exceeds"), std::string::npos) << logs_.text();
}

TEST_F(TcpStoreServerTest, MalformedRequestIsRejected) {
  Fd raw = raw_open(server_.port());
  std::string bytes = std::string("\x09\x00\x00\x00", 4);  // a 9-byte body:
  bytes += std::string(8, '\x01');              // id
  bytes += '\x63';                              // op 99
  ASSERT_TRUE(send_all(raw.get(), bytes, Deadline::after_seconds(5)).is_ok());
  EXPECT_TRUE(closed_by_server(raw.get()));
  EXPECT_TRUE(connect_client(server_.port())->set("k", "v").is_ok());
}

TEST_F(TcpStoreServerTest, ParkedGetsAreAllAnsweredBySet) {
  constexpr int kWaiters = 32;
  std::vector<std::unique_ptr<TcpStore>> clients;
  for (int i = 0; i < kWaiters; ++i) clients.push_back(connect_client(server_.port()));
  std::vector<Result<std::string>> got(kWaiters, internal_error("not run"));
  std::vector<std::thread> threads;
  for (int i = 0; i < kWaiters; ++i) {
    threads.emplace_back([&, i] { got[i] = clients[i]->get("go", Deadline::after_seconds(30)); });
  }
  ASSERT_TRUE(eventually([&] { return server_.parked_requests() == kWaiters; }));
  ASSERT_TRUE(connect_client(server_.port())->set("go", "now").is_ok());
  for (auto& t : threads) t.join();
  for (const auto& g : got) EXPECT_EQ(g.is_ok() ? *g : g.status().to_string(), "now");
  // The count is a snapshot the loop publishes after sending the replies.
  EXPECT_TRUE(eventually([&] { return server_.parked_requests() == 0; }));
}

TEST_F(TcpStoreServerTest, StopFailsWaitingClientsPromptly) {
  auto client = connect_client(server_.port());
  Result<std::string> got = internal_error("not run");
  auto start = Clock::now();
  std::thread waiter([&] { got = client->get("never", Deadline::after_seconds(60)); });
  ASSERT_TRUE(eventually([&] { return server_.parked_requests() == 1; }));
  server_.stop();
  waiter.join();
  EXPECT_LT(Clock::now() - start, seconds(10));
  ASSERT_FALSE(got.is_ok());
  EXPECT_EQ(got.status().code(), Code::kUnavailable) << got.status().to_string();
  EXPECT_NE(got.status().message().find("store get 'never' on " + address()), std::string::npos)
      << got.status().message();
}

TEST_F(TcpStoreServerTest, ClosedClientsReleaseTheirParkedRequests) {
  {
    auto client = connect_client(server_.port());
    std::thread waiter([&] { (void)client->get("k", Deadline::after_ms(300)); });
    ASSERT_TRUE(eventually([&] { return server_.parked_requests() == 1; }));
    waiter.join();  // the server times it out
  }
  EXPECT_TRUE(eventually([&] { return server_.parked_requests() == 0; }));
  EXPECT_TRUE(eventually([&] { return server_.connections() == 0; }));
}

TEST_F(TcpStoreServerTest, BusyPortIsReportedWithTheAddress) {
  TcpStoreServer second;
  Status s = second.start("127.0.0.1", server_.port());
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.code(), Code::kUnavailable) << s.to_string();
  EXPECT_NE(s.message().find(address()), std::string::npos) << s.to_string();
  EXPECT_EQ(second.port(), 0);
}

}  // namespace
}  // namespace kiln::store::tcp
