// The load generator against a cpp-httplib server on loopback (not kiln
// serve's own front: testing/httplib_server.h): every
// scheduled request is counted once, as answered, refused (503) or dropped
// with the reason, and latencies run from the scheduled time.
#include "kiln/serve/load_gen.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <memory>
#include <thread>

#include "kiln/base/fd.h"
#include "kiln/serve/testing/httplib_server.h"

namespace kiln::serve {
namespace {

// Answers POST /v1/predict by `answer`, echoing the request count.
struct Server {
  httplib::Server http;
  std::atomic<int> requests{0};
  std::unique_ptr<testing::HttplibServer> front;
  int port = 0;
  explicit Server(std::function<void(int n, const httplib::Request&, httplib::Response&)> answer) {
    http.Post("/v1/predict", [this, answer](const httplib::Request& req, httplib::Response& res) {
      answer(requests.fetch_add(1), req, res);
    });
    front = std::make_unique<testing::HttplibServer>(http);
    port = front->port();
  }
};

LoadOptions options(int port, double rate, double seconds, int clients) {
  return {.port = port,
          .body = R"({"image": [1, 2, 3]})",
          .rate = [rate](double) { return rate; },
          .duration_s = seconds,
          .clients = clients};
}

TEST(LoadGen, CountsEveryRequestOnceAsOkRefusedOrDropped) {
  Server s([](int n, const httplib::Request& req, httplib::Response& res) {
    if (req.body != R"({"image": [1, 2, 3]})") {
      res.status = 400;
    } else if (n % 5 == 1) {
      res.status = 503;
      res.set_header("Retry-After", "1");
    } else if (n % 5 == 2) {
      res.status = 500;
      res.set_content("model failed", "text/plain");
    } else {
      res.set_content(R"({"class": 3})", "application/json");
    }
  });
  ASSERT_GT(s.port, 0);
  LoadResult r = run_load(options(s.port, 400, 1.0, 8));
  const int sent = s.requests.load();
  EXPECT_GT(sent, 200);  // ~400 scheduled
  EXPECT_EQ(r.ok + r.rejected + r.dropped, static_cast<std::uint64_t>(sent));
  EXPECT_EQ(r.ok, static_cast<std::uint64_t>(sent - (sent + 3) / 5 - (sent + 2) / 5));
  EXPECT_EQ(r.rejected, static_cast<std::uint64_t>((sent + 3) / 5));
  EXPECT_EQ(r.dropped, static_cast<std::uint64_t>((sent + 2) / 5));
  ASSERT_FALSE(r.drop_reasons.empty());
  EXPECT_EQ(r.drop_reasons[0], "HTTP 500: model failed");
  EXPECT_EQ(r.latencies_s.size(), r.ok);
  EXPECT_EQ(r.sent_at_s.size(), r.ok);
  for (double t : r.sent_at_s) EXPECT_LT(t, 1.0);
}

TEST(LoadGen, ARequestLargerThanTheSocketBufferIsSentWhole) {
  // 8 MiB bodies: send() takes part of each, the rest goes when the socket
  // is writable again (EPOLLOUT), and the server sees every byte.
  const std::string body(8 << 20, 'x');
  Server s([&body](int, const httplib::Request& req, httplib::Response& res) {
    if (req.body != body) res.status = 400;
    res.set_content("{}", "application/json");
  });
  ASSERT_GT(s.port, 0);
  LoadOptions o = options(s.port, 40, 0.25, 4);
  o.body = body;
  LoadResult r = run_load(o);
  EXPECT_GT(r.ok, 2u);
  EXPECT_EQ(r.ok, static_cast<std::uint64_t>(s.requests.load()));
  EXPECT_EQ(r.dropped, 0u) << (r.drop_reasons.empty() ? "" : r.drop_reasons[0]);
}

TEST(LoadGen, LatencyRunsFromTheScheduledTimeWhenEveryConnectionIsBusy) {
  // One connection, a 20 ms server, 200 req/s offered: requests wait for the
  // connection, and that wait is latency (no coordinated omission).
  Server s([](int, const httplib::Request&, httplib::Response& res) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    res.set_content("{}", "application/json");
  });
  ASSERT_GT(s.port, 0);
  LoadResult r = run_load(options(s.port, 200, 0.5, 1));
  ASSERT_GT(r.ok, 10u);
  EXPECT_EQ(r.dropped, 0u);
  // ~100 requests served one at a time at 20 ms each: the last waited ~1.5 s.
  EXPECT_GT(quantile(r.latencies_s, 1.0), 0.5);
  EXPECT_GE(quantile(r.latencies_s, 0.0), 0.019);
}

TEST(LoadGen, AfterConnectionCloseItReconnects) {
  // Every third answer ends its connection.
  Server s([](int n, const httplib::Request&, httplib::Response& res) {
    if (n % 3 == 0) {
      res.set_header("Connection", "close");
      res.status = 200;
      res.set_content("{}", "application/json");
      return;
    }
    res.set_content("{}", "application/json");
  });
  ASSERT_GT(s.port, 0);
  LoadResult r = run_load(options(s.port, 300, 0.5, 4));
  // "Connection: close" answers are answers; the generator reconnects.
  EXPECT_EQ(r.ok, static_cast<std::uint64_t>(s.requests.load()));
  EXPECT_EQ(r.dropped, 0u);
}

TEST(LoadGen, AConnectionClosedWithoutAnAnswerIsADropWithItsReason) {
  // A server that reads each request and closes the connection unanswered.
  Fd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{.sin_family = AF_INET, .sin_port = 0, .sin_addr = {htonl(INADDR_LOOPBACK)}};
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::listen(listener.get(), 64), 0);
  socklen_t len = sizeof addr;
  ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&addr), &len);
  std::atomic<bool> stop{false};
  std::thread closer([&] {
    while (!stop) {
      pollfd p{.fd = listener.get(), .events = POLLIN};
      if (::poll(&p, 1, 50) != 1) continue;
      Fd c(::accept(listener.get(), nullptr, nullptr));
      char buf[4096];
      ::recv(c.get(), buf, sizeof buf, 0);  // the request's first bytes; then close
    }
  });
  LoadResult r = run_load(options(ntohs(addr.sin_port), 100, 0.3, 2));
  stop = true;
  closer.join();
  EXPECT_EQ(r.ok, 0u);
  EXPECT_GT(r.dropped, 5u);
  ASSERT_FALSE(r.drop_reasons.empty());
  EXPECT_TRUE(r.drop_reasons[0].find("closed the connection") != std::string::npos ||
              r.drop_reasons[0].find("recv") != std::string::npos)
      << r.drop_reasons[0];
}

TEST(LoadGen, NoServerMeansDroppedWithTheReasonNeverAHang) {
  int port;
  {
    Server s([](int, const httplib::Request&, httplib::Response&) {});
    port = s.port;
  }
  LoadResult r = run_load(options(port, 100, 0.3, 2));
  EXPECT_EQ(r.ok, 0u);
  EXPECT_GT(r.dropped, 5u);
  ASSERT_FALSE(r.drop_reasons.empty());
  EXPECT_NE(r.drop_reasons[0].find("cannot connect"), std::string::npos) << r.drop_reasons[0];
}

}  // namespace
}  // namespace kiln::serve
