// Helpers for the TcpStore tests only.
#pragma once

#include <spdlog/sinks/ostream_sink.h>
#include <sys/socket.h>

#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

#include "kiln/base/deadline.h"
#include "kiln/base/logging.h"

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

// Copies what kiln::log() writes while alive. Read text() only once the
// threads that log have stopped.
class LogCapture {
 public:
  LogCapture() : sink_(std::make_shared<spdlog::sinks::ostream_sink_mt>(out_)) {
    log()->sinks().push_back(sink_);
  }
  ~LogCapture() {
    auto& sinks = log()->sinks();
    std::erase(sinks, sink_);
  }
  std::string text() const { return out_.str(); }

 private:
  std::ostringstream out_;
  std::shared_ptr<spdlog::sinks::ostream_sink_mt> sink_;
};

}  // namespace kiln::store::tcp
