// The store with a job token: only clients that prove they hold it get in;
// a refused client is logged with its address and the job's own clients are
// not disturbed.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <thread>

#include "kiln/base/socket.h"
#include "kiln/store/tcp/client.h"
#include "kiln/store/tcp/server.h"
#include "kiln/store/tcp/test_util.h"

namespace kiln::store::tcp {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

const std::string kToken = "a3f1c2d4e5b60718293a4b5c6d7e8f90";
const std::string kWrongToken = "00000000000000000000000000000000";

class StoreAuthTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<TcpStoreServer>(
        TcpStoreServerOptions{.token = kToken, .handshake_timeout = milliseconds(500)});
    ASSERT_TRUE(server_->start("127.0.0.1", 0).is_ok());
  }
  Result<std::unique_ptr<TcpStore>> connect(const std::string& token) {
    return TcpStore::connect("127.0.0.1", server_->port(),
                             {.token = token, .connect_timeout = seconds(5)});
  }

  LogCapture logs_;
  std::unique_ptr<TcpStoreServer> server_;
};

TEST_F(StoreAuthTest, TheJobsTokenGetsIn) {
  auto store = connect(kToken);
  ASSERT_TRUE(store.is_ok()) << store.status().to_string();
  ASSERT_TRUE((*store)->set("k", "v").is_ok());
  EXPECT_EQ(*(*store)->get("k", Deadline::after_seconds(5)), "v");
  EXPECT_EQ(server_->refused(), 0u);
}

TEST_F(StoreAuthTest, NoTokenOrAWrongOneIsRefusedLoggedAndDoesNotDisturbTheJob) {
  auto member = connect(kToken);
  ASSERT_TRUE(member.is_ok()) << member.status().to_string();
  // A job client parked on a key while intruders knock.
  Result<std::string> parked = internal_error("not run");
  std::thread waiter([&] { parked = (*member)->get("go", Deadline::after_seconds(20)); });
  ASSERT_TRUE(eventually([&] { return server_->parked_requests() == 1; }));

  auto anonymous = connect("");
  ASSERT_FALSE(anonymous.is_ok());
  EXPECT_EQ(anonymous.status().code(), Code::kFailedPrecondition);
  EXPECT_NE(anonymous.status().message().find("KILN_JOB_TOKEN"), std::string::npos)
      << anonymous.status().to_string();

  auto wrong = connect(kWrongToken);
  ASSERT_FALSE(wrong.is_ok());
  EXPECT_EQ(wrong.status().code(), Code::kFailedPrecondition) << wrong.status().to_string();
  EXPECT_NE(wrong.status().message().find("refused our job token"), std::string::npos)
      << wrong.status().to_string();
  EXPECT_TRUE(eventually([&] { return server_->refused() == 2; }));

  // The intruders changed nothing: the parked get is still there and is
  // answered by the job's own set.
  EXPECT_EQ(server_->parked_requests(), 1u);
  auto other = connect(kToken);
  ASSERT_TRUE(other.is_ok());
  ASSERT_TRUE((*other)->set("go", "now").is_ok());
  waiter.join();
  ASSERT_TRUE(parked.is_ok()) << parked.status().to_string();
  EXPECT_EQ(*parked, "now");
  server_->stop();
  EXPECT_NE(logs_.text().find("closing connection from 127.0.0.1:"), std::string::npos)
      << logs_.text();
  EXPECT_NE(logs_.text().find("refused: authentication failed"), std::string::npos)
      << logs_.text();
  EXPECT_NE(logs_.text().find("refused: closed before authenticating"), std::string::npos)
      << logs_.text();
}

TEST_F(StoreAuthTest, ASilentConnectionIsClosedAfterTheHandshakeTimeout) {
  auto fd = net::connect_tcp("127.0.0.1", server_->port(), Deadline::after_seconds(5));
  ASSERT_TRUE(fd.is_ok());
  // Says nothing: the server must not hold the socket forever.
  char buf[64];
  Status s = net::recv_exact(fd->get(), buf, sizeof(buf), Deadline::after_seconds(10));
  EXPECT_EQ(s.code(), Code::kUnavailable) << s.to_string();
  EXPECT_TRUE(eventually([&] { return server_->refused() == 1; }));
  server_->stop();
  EXPECT_NE(logs_.text().find("no hello and authentication within 500ms"), std::string::npos)
      << logs_.text();
}

TEST_F(StoreAuthTest, AClientWithATokenRefusesAnOpenServer) {
  TcpStoreServer open;
  ASSERT_TRUE(open.start("127.0.0.1", 0).is_ok());
  auto store = TcpStore::connect("127.0.0.1", open.port(),
                                 {.token = kToken, .connect_timeout = seconds(5)});
  ASSERT_FALSE(store.is_ok());
  EXPECT_EQ(store.status().code(), Code::kFailedPrecondition) << store.status().to_string();
}

}  // namespace
}  // namespace kiln::store::tcp
