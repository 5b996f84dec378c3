#include "kiln/comm/transport/tcp/device.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>

#include "kiln/base/logging.h"
#include "kiln/comm/thread_role.h"

namespace kiln::comm::transport::tcp {

Result<std::unique_ptr<Device>> Device::create() {
  Fd epfd(epoll_create1(EPOLL_CLOEXEC));
  if (!epfd.valid()) return errno_status("epoll_create1", errno);
  Fd stopfd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stopfd.valid()) return errno_status("eventfd", errno);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.ptr = nullptr;
  epoll_ctl(epfd.get(), EPOLL_CTL_ADD, stopfd.get(), &ev);
  return std::unique_ptr<Device>(new Device(std::move(epfd), std::move(stopfd)));
}

Status Device::watch(TcpPair* pair) {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.ptr = pair;
  if (epoll_ctl(epfd_.get(), EPOLL_CTL_ADD, pair->fd(), &ev) != 0) {
    return errno_status("epoll_ctl(ADD)", errno);
  }
  return Status::ok();
}

void Device::start() { thread_ = std::thread([this] { loop(); }); }

void Device::loop() {
  become_comm_thread("kiln-tcp");
  epoll_event events[64];
  while (true) {
    int n = epoll_wait(epfd_.get(), events, 64, -1);
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
  ssize_t ignored = write(stopfd_.get(), &one, sizeof(one));
  (void)ignored;
  if (thread_.joinable()) thread_.join();
}

}  // namespace kiln::comm::transport::tcp
