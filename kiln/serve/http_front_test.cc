// start_http_front's listening socket holds a burst of connections
// (Note [Listen backlog]): checked on the kernel's own bound and by opening
// many connections while the accept loop is held.
#include "kiln/serve/http_front.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <fstream>
#include <future>
#include <mutex>

#include "kiln/base/fd.h"

namespace kiln::serve {
namespace {

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

struct Front {
  httplib::Server server;
  std::thread loop;
  int port = 0;
  explicit Front(HttpFrontOptions o) {
    server.Get("/ping", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("pong", "text/plain");
    });
    auto p = start_http_front(server, o, &loop);
    EXPECT_TRUE(p.is_ok()) << p.status().to_string();
    port = p.is_ok() ? *p : 0;
  }
  ~Front() {
    server.stop();
    if (loop.joinable()) loop.join();
  }
};

TEST(HttpFront, TheKernelHoldsTheRaisedBacklog) {
  Front front({.threads = 4});
  ASSERT_GT(front.port, 0);
  const int fd = find_listening_socket(front.port);
  ASSERT_GE(fd, 0) << "no listening socket on port " << front.port;
  tcp_info info{};
  socklen_t len = sizeof info;
  ASSERT_EQ(::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len), 0);
  // For a listener, tcpi_sacked is the accept queue's bound (httplib's own: 5).
  EXPECT_EQ(static_cast<int>(info.tcpi_sacked), std::min(kListenBacklog, somaxconn()));
}

// Accepted connections wait here until released: the accept loop blocks
// in enqueue, as a busy server's does, so the kernel's accept queue fills.
class HeldQueue : public httplib::TaskQueue {
 public:
  explicit HeldQueue(std::shared_future<void> release) : release_(std::move(release)) {}
  void enqueue(std::function<void()> fn) override {
    release_.wait_for(std::chrono::seconds(20));  // bounded: a failing test still ends
    pool_.enqueue(std::move(fn));
  }
  void shutdown() override { pool_.shutdown(); }

 private:
  std::shared_future<void> release_;
  httplib::ThreadPool pool_{8};
};

TEST(HttpFront, ABurstOfConnectionsCompletesWhileTheAcceptLoopIsBusy) {
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  Front front({.task_queue = [released] { return new HeldQueue(released); }});
  ASSERT_GT(front.port, 0);

  // 64 connections at once, as the load generator's or a router's clients
  // open them. With a backlog of 5 the SYNs past the 6th are dropped and
  // retried after 1 s; with the raised backlog every handshake completes now.
  constexpr int kConnections = 64;
  std::vector<Fd> fds;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(front.port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (int i = 0; i < kConnections; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    ASSERT_GE(fd, 0);
    fds.emplace_back(fd);
    const int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    ASSERT_TRUE(rc == 0 || errno == EINPROGRESS) << std::strerror(errno);
  }
  // Well under the 1 s SYN retransmission: a dropped SYN cannot complete.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  int connected = 0;
  for (const Fd& sock : fds) {
    const int fd = sock.get();
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    pollfd p{fd, POLLOUT, 0};
    int err = -1;
    socklen_t len = sizeof err;
    if (::poll(&p, 1, static_cast<int>(std::max<long>(0, left.count()))) == 1 &&
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) {
      ++connected;
    }
  }
  EXPECT_EQ(connected, kConnections);

  // Every one of them is served once the loop moves again.
  release.set_value();
  const std::string request = "GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  int answered = 0;
  for (const Fd& sock : fds) {
    const int fd = sock.get();
    const int flags = ::fcntl(fd, F_GETFL);
    ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    timeval tv{10, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) !=
        static_cast<ssize_t>(request.size())) {
      continue;
    }
    std::string reply;
    char buf[512];
    for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) reply.append(buf, n);
    if (reply.rfind("HTTP/1.1 200", 0) == 0 && reply.find("pong") != std::string::npos) {
      ++answered;
    }
  }
  EXPECT_EQ(answered, kConnections);
}

}  // namespace
}  // namespace kiln::serve
