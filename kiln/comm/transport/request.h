// Request: the completion state of one posted send or receive.
//
// Owned by the algorithm that posted it (usually on its stack); the transport
// keeps a pointer until it completes or fails the request. Context::wait()
// never returns while a transport may still touch a request it was given.
#pragma once

#include <atomic>
#include <cstdint>

#include "kiln/base/status.h"

namespace kiln::comm::transport {

class Pair;

class Request {
 public:
  Request() = default;
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;

  bool done() const { return state_.load(std::memory_order_acquire) != kPending; }
  bool failed() const { return state_.load(std::memory_order_acquire) == kFailed; }
  // Valid once done().
  const Status& status() const { return error_; }

  // Called by the transport; exactly one of them, once.
  void complete() { state_.store(kDone, std::memory_order_release); }
  void fail(Status why) {
    error_ = std::move(why);
    state_.store(kFailed, std::memory_order_release);
  }

  // The pair it was posted on (for progress and for naming the peer in errors).
  Pair* pair = nullptr;

 private:
  static constexpr int kPending = 0, kDone = 1, kFailed = 2;
  std::atomic<int> state_{kPending};
  Status error_;
};

}  // namespace kiln::comm::transport
