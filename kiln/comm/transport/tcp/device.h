// Device: the tcp transport's one progress thread. It watches every tcp
// pair's socket with edge-triggered epoll and drives the pair when its socket
// becomes readable or writable, so transfers advance while the communicator's
// thread is asleep or computing.
#pragma once

#include <atomic>
#include <thread>
#include <vector>

#include "kiln/base/fd.h"
#include "kiln/base/status.h"
#include "kiln/comm/transport/tcp/pair.h"

namespace kiln::comm::transport::tcp {

class Device {
 public:
  static Result<std::unique_ptr<Device>> create();
  ~Device();  // stops and joins the thread

  // Watches pair's socket until the Device is destroyed. Call before use.
  Status watch(TcpPair* pair);
  void start();

 private:
  Device(Fd epfd, Fd stopfd) : epfd_(std::move(epfd)), stopfd_(std::move(stopfd)) {}
  void loop();

  Fd epfd_;
  Fd stopfd_;
  std::thread thread_;
};

}  // namespace kiln::comm::transport::tcp
