// Deadline: every blocking call in Kiln takes one.
#pragma once

#include <chrono>
#include <cstdint>

namespace kiln {

using Clock = std::chrono::steady_clock;
using Millis = std::chrono::milliseconds;

// Seconds from `t` to now: the span of a timed phase, for stats and logs.
inline double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

class Deadline {
 public:
  // A deadline that never expires; use only where a caller-supplied
  // timeout is applied further down.
  static Deadline never() { return Deadline(Clock::time_point::max()); }
  static Deadline after(Clock::duration d) {
    auto now = Clock::now();
    if (d >= Clock::time_point::max() - now) return never();
    return Deadline(now + d);
  }
  static Deadline after_ms(std::int64_t ms) { return after(Millis(ms)); }
  static Deadline after_seconds(double s) {
    return after(std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s)));
  }

  bool expired() const { return Clock::now() >= at_; }
  bool is_never() const { return at_ == Clock::time_point::max(); }
  Clock::time_point at() const { return at_; }

  // Time left, zero once expired.
  Clock::duration remaining() const {
    if (is_never()) return Clock::duration::max();
    auto now = Clock::now();
    return now >= at_ ? Clock::duration::zero() : at_ - now;
  }
  // Time left in whole milliseconds, rounded up (0 once expired): a
  // timeout handed from it to poll() or curl never ends before the deadline.
  std::int64_t remaining_ms() const {
    if (is_never()) return INT64_MAX;
    return std::chrono::ceil<Millis>(remaining()).count();
  }

  // The earlier of the two.
  Deadline min(Deadline other) const { return other.at_ < at_ ? other : *this; }

 private:
  explicit Deadline(Clock::time_point at) : at_(at) {}
  Clock::time_point at_;
};

}  // namespace kiln
