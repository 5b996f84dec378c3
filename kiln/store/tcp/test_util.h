// Helpers for the TcpStore tests only.
#pragma once

#include <sys/socket.h>

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "kiln/base/deadline.h"
#include "kiln/base/logging.h"
#include "kiln/base/testing/log_capture.h"

namespace kiln::store::tcp {

// Polls `pred` until it holds or 10 s pass: for state another thread reaches
// (a request parked on the server), never a fixed sleep.
inline bool eventually(const std::function<bool()>& pred) {
  Deadline deadline = Deadline::after_seconds(10);
  while (!pred()) {
    if (deadline.expired()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

using kiln::testing::LogCapture;

}  // namespace kiln::store::tcp
