// LogCapture: what kiln::log() writes while a test runs, for tests that
// assert a warning was (or was not) logged.
#pragma once

#include <spdlog/sinks/ostream_sink.h>

#include <algorithm>
#include <memory>
#include <sstream>
#include <string>

#include "kiln/base/logging.h"

namespace kiln::testing {

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
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;
  std::string text() const { return out_.str(); }

 private:
  std::ostringstream out_;
  std::shared_ptr<spdlog::sinks::ostream_sink_mt> sink_;
};

}  // namespace kiln::testing
