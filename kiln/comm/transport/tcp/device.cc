#include "kiln/comm/transport/tcp/device.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>

#include "kiln/base/logging.h"

namespace kiln::comm::transport::tcp {

Result<std::unique_ptr<Device>> Device::create() {
  int epfd = epoll_create1(EPOLL_CLOEXEC);
  if (epfd < 0) return errno_status("epoll_create1", errno);
  int stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stopfd < 0) {
    close(epfd);
    return errno_status("eventfd", errno);
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;
  epoll_ctl(epfd, EPOLL_CTL_ADD, stopfd, &ev);
  return std::unique_ptr<Device>(new Device(epfd, stopfd));
}

Status Device::watch(TcpPair* pair) {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.ptr = pair;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, pair->fd(), &ev) != 0) {
    return errno_status("epoll_ctl(ADD)", errno);
  }
  return Status::ok();
}

void Device::start() { thread_ = std::thread([this] { loop(); }); }

void Device::loop() {
  epoll_event events[64];
  while (true) {
    int n = epoll_wait(epfd_, events, 64, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      log()->error("tcp progress thread: epoll_wait failed: {}", errno);
      return;
    }
    for (int i = 0; i < n; ++i) {
      if (events[i].data.ptr == nullptr) return;  // stop requested
      static_cast<TcpPair*>(events[i].data.ptr)->on_ready();
    }
  }
}

Device::~Device() {
  std::uint64_t one = 1;
  ssize_t ignored = write(stopfd_, &one, sizeof(one));
  (void)ignored;
  if (thread_.joinable()) thread_.join();
  close(stopfd_);
  close(epfd_);
}

}  // namespace kiln::comm::transport::tcp
