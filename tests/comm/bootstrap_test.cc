// Connection setup: garbage on a rank's listening port is rejected and the
// group still forms; a rank that never shows up is named after the timeout.
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "kiln/comm/transport/select.h"
#include "kiln/comm/transport/tcp/socket.h"
#include "kiln/store/memory_store.h"
#include "kiln/store/tcp/test_util.h"

namespace kiln::comm::transport {
namespace {

TEST(Bootstrap, GarbageOnTheListenerIsRejectedAndTheGroupStillForms) {
  store::MemoryStore store;
  ConnectOptions o;
  o.mode = TransportMode::kTcp;
  o.tag = "garbage";
  Result<std::unique_ptr<Context>> rank0 = internal_error("not run");
  std::thread t0([&] { rank0 = connect_all(store, 0, 2, o, Deadline::after_ms(20000)); });
  // Find rank 0's advertised endpoint and throw junk at it before rank 1 joins.
  auto record = store.get("comm/garbage/peer/0", Deadline::after_ms(10000));
  ASSERT_TRUE(record.is_ok()) << record.status().to_string();
  auto ep = tcp::parse_endpoint(nlohmann::json::parse(*record)["endpoint"].get<std::string>());
  ASSERT_TRUE(ep.is_ok());
  for (int i = 0; i < 3; ++i) {
    auto fd = tcp::connect_to(*ep, Deadline::after_ms(5000));
    ASSERT_TRUE(fd.is_ok()) << fd.status().to_string();
    std::string junk = "GET / HTTP/1.1\r\nHost: kiln\r\n\r\n" + std::string(64, '\xff');
    ASSERT_TRUE(net::send_all(fd->get(), junk, Deadline::after_ms(1000)).is_ok());
  }
  Result<std::unique_ptr<Context>> rank1 = connect_all(store, 1, 2, o, Deadline::after_ms(20000));
  t0.join();
  ASSERT_TRUE(rank0.is_ok()) << rank0.status().to_string();
  ASSERT_TRUE(rank1.is_ok()) << rank1.status().to_string();
  // And the connection works.
  int out = 42, in = 0;
  Request s, r;
  (*rank1)->pair(0).post_send(&out, sizeof(out), &s);
  (*rank0)->pair(1).post_recv(&in, sizeof(in), &r);
  std::thread waiter([&] { EXPECT_TRUE((*rank1)->wait({&s}, Deadline::after_ms(5000), "send").is_ok()); });
  EXPECT_TRUE((*rank0)->wait({&r}, Deadline::after_ms(5000), "recv").is_ok());
  waiter.join();
  EXPECT_EQ(in, 42);
}

// A process that knows rank 0's port and plays rank 1 without the job's token
// (none, or a wrong one) is refused and logged with its address; the real
// rank 1 then joins and the group forms.
TEST(Bootstrap, APeerWithoutTheJobTokenIsRefusedAndTheGroupStillForms) {
  const std::string token = "5b1e0c9d8a7f6e5d4c3b2a1908f7e6d5";
  for (const std::string& rogue_token : {std::string(), std::string(32, 'f')}) {
    SCOPED_TRACE(rogue_token.empty() ? "no token" : "wrong token");
    store::tcp::LogCapture logs;
    store::MemoryStore store;
    ConnectOptions o;
    o.mode = TransportMode::kTcp;
    o.tag = "auth";
    o.token = token;
    Result<std::unique_ptr<Context>> rank0 = internal_error("not run");
    std::thread t0([&] { rank0 = connect_all(store, 0, 2, o, Deadline::after_ms(20000)); });
    ConnectOptions rogue_options = o;
    rogue_options.token = rogue_token;
    auto rogue = connect_all(store, 1, 2, rogue_options, Deadline::after_ms(5000));
    ASSERT_FALSE(rogue.is_ok());
    EXPECT_EQ(rogue.status().code(), Code::kFailedPrecondition) << rogue.status().to_string();
    EXPECT_NE(rogue.status().message().find("authenticating to rank 0"), std::string::npos)
        << rogue.status().to_string();

    auto rank1 = connect_all(store, 1, 2, o, Deadline::after_ms(20000));
    t0.join();
    ASSERT_TRUE(rank0.is_ok()) << rank0.status().to_string();
    ASSERT_TRUE(rank1.is_ok()) << rank1.status().to_string();
    int out = 7, in = 0;
    Request s, r;
    (*rank1)->pair(0).post_send(&out, sizeof(out), &s);
    (*rank0)->pair(1).post_recv(&in, sizeof(in), &r);
    std::thread waiter(
        [&] { EXPECT_TRUE((*rank1)->wait({&s}, Deadline::after_ms(5000), "send").is_ok()); });
    EXPECT_TRUE((*rank0)->wait({&r}, Deadline::after_ms(5000), "recv").is_ok());
    waiter.join();
    EXPECT_EQ(in, 7);
    EXPECT_NE(logs.text().find("rank 0: refused a connection from 127.0.0.1:"),
              std::string::npos)
        << logs.text();
    if (!rogue_token.empty()) {
      EXPECT_NE(logs.text().find("does not hold this job's token"), std::string::npos)
          << logs.text();
    }
  }
}

TEST(Bootstrap, AbsentRankIsNamedAfterTheTimeout) {
  store::MemoryStore store;
  ConnectOptions o;
  o.tag = "absent";
  auto start = Clock::now();
  auto ctx = connect_all(store, 0, 3, o, Deadline::after_ms(500));
  ASSERT_FALSE(ctx.is_ok());
  EXPECT_EQ(ctx.status().code(), Code::kDeadlineExceeded) << ctx.status().to_string();
  EXPECT_NE(ctx.status().message().find("rank 1"), std::string::npos) << ctx.status().to_string();
  EXPECT_LT(Clock::now() - start, std::chrono::seconds(3));
}

}  // namespace
}  // namespace kiln::comm::transport
