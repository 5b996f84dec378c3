// EventFront over real sockets on loopback (port 0), with raw clients so the
// tests control how requests are cut, pipelined and abandoned.
#include "kiln/serve/event_front.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <future>
#include <mutex>
#include <optional>
#include <thread>

#include "kiln/base/socket.h"
#include "kiln/serve/response_reader.h"

namespace kiln::serve {
namespace {

// A raw keep-alive client.
class RawClient {
 public:
  explicit RawClient(int port) {
    auto fd =
        net::connect_tcp("127.0.0.1", static_cast<std::uint16_t>(port), Deadline::after_seconds(5));
    EXPECT_TRUE(fd.is_ok()) << fd.status().to_string();
    if (fd.is_ok()) fd_ = std::move(fd).value();
  }
  void shutdown_write() { ::shutdown(fd_.get(), SHUT_WR); }
  void send(const std::string& bytes) {
    EXPECT_TRUE(net::send_all(fd_.get(), bytes, Deadline::after_seconds(5)).is_ok());
  }
  // Up to `n` responses within 5 s (fewer if the server closes first).
  std::vector<HttpResponse> read(std::size_t n, int* recv_calls = nullptr) {
    std::vector<HttpResponse> got;
    const Deadline deadline = Deadline::after_seconds(5);
    while (got.size() < n && !deadline.expired()) {
      if (!fill(deadline, recv_calls)) break;
      while (got.size() < n) {
        auto r = reader_.next();
        EXPECT_TRUE(r.is_ok()) << r.status().to_string();
        if (!r.is_ok() || !r->has_value()) break;
        got.push_back(**r);
      }
    }
    return got;
  }
  // The bytes received until `needle` is among them (5 s at most).
  std::string read_raw_until(const std::string& needle) {
    std::string raw;
    const Deadline deadline = Deadline::after_seconds(5);
    while (raw.find(needle) == std::string::npos && !deadline.expired()) {
      pollfd p{.fd = fd_.get(), .events = POLLIN, .revents = 0};
      if (::poll(&p, 1, static_cast<int>(deadline.remaining_ms())) <= 0) break;
      char buf[4096];
      const ssize_t n = ::recv(fd_.get(), buf, sizeof buf, MSG_DONTWAIT);
      if (n <= 0) break;
      raw.append(buf, static_cast<std::size_t>(n));
    }
    return raw;
  }
  // Whether the server closed the connection within 5 s (reading past
  // anything it still sends).
  bool closed_by_server() {
    const Deadline deadline = Deadline::after_seconds(5);
    while (!deadline.expired()) {
      if (!fill(deadline, nullptr)) return eof_;
    }
    return false;
  }

 private:
  // Waits for bytes; false on EOF, an error or the deadline.
  bool fill(const Deadline& deadline, int* recv_calls) {
    pollfd p{.fd = fd_.get(), .events = POLLIN, .revents = 0};
    if (::poll(&p, 1, static_cast<int>(deadline.remaining_ms())) <= 0) {
      return false;
    }
    char buf[65536];
    const ssize_t n = ::recv(fd_.get(), buf, sizeof buf, MSG_DONTWAIT);
    if (n <= 0) {
      eof_ = n == 0;
      return false;
    }
    if (recv_calls != nullptr) ++*recv_calls;
    reader_.feed(std::string_view(buf, static_cast<std::size_t>(n)));
    return true;
  }

  Fd fd_;
  ResponseReader reader_;
  bool eof_ = false;
};

std::string post(const std::string& body, const std::string& extra_headers = "") {
  return "POST /echo HTTP/1.1\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" +
         extra_headers + "\r\n" + body;
}

// Whether the front stopped accepting (its listener closed: stop() began)
// within 5 s.
bool refuses_connections(int port) {
  const Deadline deadline = Deadline::after_seconds(5);
  while (!deadline.expired()) {
    auto fd =
        net::connect_tcp("127.0.0.1", static_cast<std::uint16_t>(port), Deadline::after_seconds(1));
    if (!fd.is_ok()) return true;
  }
  return false;
}

int thread_count() {
  int n = 0;
  DIR* dir = ::opendir("/proc/self/task");
  while (dir != nullptr && ::readdir(dir) != nullptr) ++n;
  if (dir != nullptr) ::closedir(dir);
  return n - 2;  // . and ..
}

// A front whose handler records each wake-up's requests and answers each
// with its body, at once or, while held, when released (from the test's
// thread, in reverse order).
class Echo {
 public:
  explicit Echo(EventFrontOptions o = {}) {
    auto f = EventFront::bind(o, [this](std::vector<IncomingRequest>& requests) {
      std::vector<std::pair<RequestTicket, HttpAnswer>> now;
      std::lock_guard<std::mutex> lock(mu_);
      batches_.push_back(requests.size());
      for (auto& r : requests) {
        HttpAnswer a{.body = r.request.body};
        if (held_) {
          later_.emplace_back(r.ticket, std::move(a));
        } else {
          now.emplace_back(r.ticket, std::move(a));
        }
      }
      cv_.notify_all();
      front_->answer(std::move(now));
    });
    EXPECT_TRUE(f.is_ok()) << f.status().to_string();
    front_ = std::move(f).value();
    front_->serve();
  }
  void hold() {
    std::lock_guard<std::mutex> lock(mu_);
    held_ = true;
  }
  // Whether `n` requests are held within 5 s.
  bool wait_held(std::size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(5), [&] { return later_.size() >= n; });
  }
  // Waits until `n` requests are held, then answers them newest first, in one call.
  void release(std::size_t n) {
    EXPECT_TRUE(wait_held(n));
    std::vector<std::pair<RequestTicket, HttpAnswer>> answers;
    {
      std::lock_guard<std::mutex> lock(mu_);
      answers.assign(std::make_move_iterator(later_.rbegin()),
                     std::make_move_iterator(later_.rend()));
      later_.clear();
      held_ = false;
    }
    front_->answer(std::move(answers));
  }
  std::vector<std::size_t> batches() {
    std::lock_guard<std::mutex> lock(mu_);
    return batches_;
  }
  EventFront& front() { return *front_; }
  int port() { return front_->port(); }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool held_ = false;                                        // GUARDED_BY(mu_)
  std::vector<std::pair<RequestTicket, HttpAnswer>> later_;  // GUARDED_BY(mu_)
  std::vector<std::size_t> batches_;                         // GUARDED_BY(mu_)
  std::unique_ptr<EventFront> front_;
};

TEST(EventFront, PipelinedRequestsAreOneBatchAndTheirAnswersGoOutInOrderInOneWrite) {
  Echo echo;
  echo.hold();
  RawClient c(echo.port());
  c.send(post("a") + post("bb") + post("ccc") + post("dddd") + post("eeeee"));
  echo.release(5);  // answered newest first, from another thread
  int recv_calls = 0;
  auto got = c.read(5, &recv_calls);
  ASSERT_EQ(got.size(), 5u);
  const char* bodies[] = {"a", "bb", "ccc", "dddd", "eeeee"};
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(got[i].status, 200);
    EXPECT_EQ(got[i].body, bodies[i]);
  }
  // One wake-up read all five; their answers came in one write.
  EXPECT_EQ(echo.batches(), std::vector<std::size_t>{5});
  EXPECT_EQ(recv_calls, 1);
}

TEST(EventFront, KeepAliveServesManyConnectionsOnOneThread) {
  Echo echo;
  const int threads = thread_count();
  std::vector<std::unique_ptr<RawClient>> clients;
  for (int i = 0; i < 200; ++i) clients.push_back(std::make_unique<RawClient>(echo.port()));
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < 200; ++i) clients[i]->send(post(std::to_string(i * 10 + round)));
    for (int i = 0; i < 200; ++i) {
      auto got = clients[i]->read(1);
      ASSERT_EQ(got.size(), 1u) << "client " << i << " round " << round;
      EXPECT_EQ(got[0].body, std::to_string(i * 10 + round));
    }
  }
  EXPECT_EQ(thread_count(), threads);  // no thread per connection
  EXPECT_EQ(echo.front().counters().connections.load(), 200u);
}

TEST(EventFront, AMalformedRequestIsAnsweredAfterTheOnesBeforeItThenTheConnectionCloses) {
  Echo echo;
  RawClient c(echo.port());
  c.send(post("first") + "POST /echo HTTP/1.1\r\nContent-Length: lots\r\n\r\n" + post("never"));
  auto got = c.read(3);
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].body, "first");
  EXPECT_EQ(got[1].status, 400);
  EXPECT_NE(got[1].body.find("Content-Length 'lots'"), std::string::npos) << got[1].body;
  EXPECT_TRUE(got[1].close);
  EXPECT_TRUE(c.closed_by_server());
  EXPECT_EQ(echo.front().counters().malformed.load(), 1u);
}

TEST(EventFront, AMalformedRequestReadOnResumingAPausedConnectionIsAnsweredThenClosed) {
  // Reading pauses after 4 outstanding requests; the malformed one is parsed
  // only when answers go out and reading resumes, inside a flush.
  Echo echo({.max_pipelined = 4});
  RawClient c(echo.port());
  std::string bytes;
  for (int i = 0; i < 8; ++i) bytes += post(std::to_string(i));
  c.send(bytes + "POST /echo HTTP/1.1\r\nContent-Length: lots\r\n\r\n");
  auto got = c.read(10);
  ASSERT_EQ(got.size(), 9u);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(got[i].body, std::to_string(i));
  EXPECT_EQ(got[8].status, 400);
  EXPECT_TRUE(got[8].close);
  EXPECT_TRUE(c.closed_by_server());
}

TEST(EventFront, RequestsPipelinedBeforeTheClientShutsItsSideAreAllAnswered) {
  Echo echo({.max_pipelined = 4});
  RawClient c(echo.port());
  std::string bytes;
  // More than one 64 KiB read, and more requests than may be outstanding.
  const std::string big(20000, 'x');
  for (int i = 0; i < 12; ++i) bytes += post(std::to_string(i) + big);
  c.send(bytes);
  c.shutdown_write();
  auto got = c.read(13);
  ASSERT_EQ(got.size(), 12u);
  for (int i = 0; i < 12; ++i) EXPECT_EQ(got[i].body, std::to_string(i) + big);
  EXPECT_TRUE(c.closed_by_server());
}

TEST(EventFront, AConnectionPausedAtOneOutstandingRequestResumes) {
  Echo echo({.max_pipelined = 1});
  RawClient c(echo.port());
  c.send(post("a") + post("b") + post("c"));
  auto got = c.read(3);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[2].body, "c");
}

TEST(EventFront, AnAnswerToHeadHasNoBody) {
  Echo echo;
  RawClient c(echo.port());
  // The body of the answer to HEAD would be read as the next answer.
  c.send("HEAD /echo HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody" + post("next"));
  const std::string raw = c.read_raw_until("next");
  EXPECT_EQ(raw.find("body"), std::string::npos) << raw;
  EXPECT_NE(raw.find("Content-Length: 4\r\n"), std::string::npos) << raw;
}

TEST(EventFront, ConnectionCloseIsHonouredAfterTheAnswer) {
  Echo echo;
  RawClient c(echo.port());
  c.send(post("bye", "Connection: close\r\n"));
  auto got = c.read(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].body, "bye");
  EXPECT_TRUE(got[0].close);
  EXPECT_TRUE(c.closed_by_server());
}

TEST(EventFront, AClientThatStallsMidRequestGets408AndIsDisconnected) {
  Echo echo({.read_timeout = std::chrono::milliseconds(300)});
  RawClient c(echo.port());
  c.send("POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\nonly part");
  auto got = c.read(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].status, 408);
  EXPECT_NE(got[0].body.find("not complete"), std::string::npos) << got[0].body;
  EXPECT_TRUE(c.closed_by_server());
  EXPECT_EQ(echo.front().counters().timed_out.load(), 1u);
}

TEST(EventFront, AnIdleConnectionIsClosedAfterTheIdleTimeout) {
  Echo echo({.idle_timeout = std::chrono::milliseconds(300)});
  RawClient c(echo.port());
  c.send(post("x"));
  ASSERT_EQ(c.read(1).size(), 1u);
  EXPECT_TRUE(c.closed_by_server());
}

TEST(EventFront, StopWritesTheAnswersToRequestsAlreadyReadThenRefusesConnections) {
  Echo echo;
  echo.hold();
  RawClient c(echo.port());
  c.send(post("one") + post("two"));
  ASSERT_TRUE(echo.wait_held(2));  // read, not answered
  std::thread stopper([&] { echo.front().stop(); });
  EXPECT_TRUE(refuses_connections(echo.port()));  // answered once stop() began
  echo.release(2);
  auto got = c.read(2);
  stopper.join();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].body, "one");
  EXPECT_EQ(got[1].body, "two");
  EXPECT_FALSE(got[0].close);
  EXPECT_TRUE(got[1].close);  // the connection's last answer says so
  EXPECT_TRUE(c.closed_by_server());
  auto again = net::connect_tcp("127.0.0.1", static_cast<std::uint16_t>(echo.port()),
                                Deadline::after_seconds(2));
  EXPECT_FALSE(again.is_ok());
}

TEST(EventFront, StopAnswersRequestsSentBeforeItOnEveryConnection) {
  // Requests a client sent before stop() may still sit in the kernel, on a
  // connection not accepted yet or in a socket not read yet: they are read
  // and answered all the same, each connection's last answer closing it.
  Echo echo;
  echo.hold();
  RawClient first(echo.port());
  first.send(post("first"));
  ASSERT_TRUE(echo.wait_held(1));
  std::vector<std::unique_ptr<RawClient>> late;
  for (int i = 0; i < 20; ++i) {
    late.push_back(std::make_unique<RawClient>(echo.port()));
    late.back()->send(post(std::to_string(i)));
  }
  std::thread stopper([&] { echo.front().stop(); });
  EXPECT_TRUE(refuses_connections(echo.port()));  // answered once stop() began
  echo.release(21);
  stopper.join();
  auto got = first.read(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_TRUE(got[0].close);
  for (int i = 0; i < 20; ++i) {
    auto r = late[i]->read(1);
    ASSERT_EQ(r.size(), 1u) << "connection " << i;
    EXPECT_EQ(r[0].body, std::to_string(i));
    EXPECT_TRUE(r[0].close);
    EXPECT_TRUE(late[i]->closed_by_server());
  }
}

TEST(EventFront, OutOfDescriptorsPausesAcceptingInsteadOfSpinningThenResumes) {
  Echo echo;
  rlimit old{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &old), 0);
  // Fill the descriptor table, then free one slot: the client's socket
  // takes it and the front's accept fails with EMFILE.
  rlimit low = old;
  low.rlim_cur = std::min<rlim_t>(old.rlim_cur, 4096);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  std::vector<Fd> fillers;
  while (true) {
    Fd f(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (!f.valid()) break;
    fillers.push_back(std::move(f));
  }
  ASSERT_FALSE(fillers.empty());
  fillers.pop_back();
  RawClient c(echo.port());
  const auto before = echo.front().counters().wakeups.load();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // a window to count wake-ups in
  const auto wakeups = echo.front().counters().wakeups.load() - before;
  fillers.clear();
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &old), 0);
  EXPECT_LT(wakeups, 20u) << "the loop spins on a listener it cannot accept from";
  c.send(post("late"));  // accepted once descriptors are free again
  auto got = c.read(1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].body, "late");
}

// This process's listening TCP socket on `port`, or -1.
int find_listening_socket(int port) {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int found = -1;
  while (dirent* e = ::readdir(dir)) {
    const int fd = std::atoi(e->d_name);
    sockaddr_in addr{};
    socklen_t len = sizeof addr;
    int listening = 0;
    socklen_t llen = sizeof listening;
    if (fd > 2 && ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0 &&
        addr.sin_family == AF_INET && ntohs(addr.sin_port) == port &&
        ::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &llen) == 0 && listening) {
      found = fd;
    }
  }
  ::closedir(dir);
  return found;
}

int somaxconn() {
  std::ifstream f("/proc/sys/net/core/somaxconn");
  int v = 0;
  f >> v;
  return v;
}

TEST(EventFront, ABurstOfConnectionsCompletesWhileTheLoopIsBusy) {
  // Note [Listen backlog]: the loop is held inside the handler (as a busy
  // front's would be), so only the kernel's accept queue holds new
  // connections meanwhile.
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::promise<void> entered;
  std::once_flag first;
  std::unique_ptr<EventFront> front;
  auto f = EventFront::bind({}, [&](std::vector<IncomingRequest>& requests) {
    std::call_once(first, [&] {
      entered.set_value();
      released.wait_for(std::chrono::seconds(20));  // bounded: a failing test still ends
    });
    for (auto& r : requests) front->answer(r.ticket, HttpAnswer{.body = "pong"});
  });
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  front = std::move(f).value();
  front->serve();
  RawClient holder(front->port());
  holder.send(post("hold"));
  ASSERT_EQ(entered.get_future().wait_for(std::chrono::seconds(5)), std::future_status::ready);

  // For a listener, tcpi_sacked is the accept queue's bound.
  tcp_info info{};
  socklen_t info_len = sizeof info;
  const int listener = find_listening_socket(front->port());
  ASSERT_GE(listener, 0);
  ASSERT_EQ(::getsockopt(listener, IPPROTO_TCP, TCP_INFO, &info, &info_len), 0);
  EXPECT_EQ(static_cast<int>(info.tcpi_sacked), std::min(kListenBacklog, somaxconn()));

  // 64 connections at once, as a load generator's or a router's clients
  // open them. With a backlog of 5 the SYNs past the 6th are dropped and
  // retried after 1 s; with the front's every handshake completes now.
  constexpr int kConnections = 64;
  std::vector<Fd> fds;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(front->port()));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (int i = 0; i < kConnections; ++i) {
    fds.emplace_back(::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    ASSERT_TRUE(fds.back().valid());
    const int rc = ::connect(fds.back().get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    ASSERT_TRUE(rc == 0 || errno == EINPROGRESS) << std::strerror(errno);
  }
  // Well under the 1 s SYN retransmission: a dropped SYN cannot complete.
  const Deadline deadline = Deadline::after_seconds(0.5);
  int connected = 0;
  for (const Fd& sock : fds) {
    pollfd p{.fd = sock.get(), .events = POLLOUT, .revents = 0};
    int err = -1;
    socklen_t len = sizeof err;
    if (::poll(&p, 1, static_cast<int>(deadline.remaining_ms())) == 1 &&
        ::getsockopt(sock.get(), SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) {
      ++connected;
    }
  }
  EXPECT_EQ(connected, kConnections);

  // Every one of them is served once the loop moves again.
  release.set_value();
  EXPECT_EQ(holder.read(1).size(), 1u);
  const std::string request = "GET /ping HTTP/1.1\r\nConnection: close\r\n\r\n";
  int answered = 0;
  for (const Fd& sock : fds) {
    if (!net::send_all(sock.get(), request, Deadline::after_seconds(5)).is_ok()) continue;
    ResponseReader reader;
    const Deadline answer_by = Deadline::after_seconds(10);
    std::optional<HttpResponse> got;
    while (!got && !answer_by.expired()) {
      pollfd p{.fd = sock.get(), .events = POLLIN, .revents = 0};
      if (::poll(&p, 1, static_cast<int>(answer_by.remaining_ms())) != 1) break;
      char buf[4096];
      const ssize_t n = ::recv(sock.get(), buf, sizeof buf, MSG_DONTWAIT);
      if (n <= 0) break;
      reader.feed(std::string_view(buf, static_cast<std::size_t>(n)));
      auto r = reader.next();
      if (!r.is_ok()) break;
      got = *r;
    }
    if (got && got->status == 200 && got->body == "pong") ++answered;
  }
  EXPECT_EQ(answered, kConnections);
  front->stop();
}

TEST(EventFront, ABusyPortIsAnErrorNamingIt) {
  Echo echo;
  auto second = EventFront::start({.port = echo.port(), .what = "second"},
                                  [](std::vector<IncomingRequest>&) {});
  ASSERT_FALSE(second.is_ok());
  EXPECT_NE(second.status().message().find(std::to_string(echo.port())), std::string::npos)
      << second.status().to_string();
}

}  // namespace
}  // namespace kiln::serve
