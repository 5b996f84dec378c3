// Exponential backoff with full jitter, bounded by attempts and a deadline.
//
//   Backoff b({.base = 100ms, .cap = 5s, .max_attempts = 10});
//   while (true) { if (try_it()) break; if (!b.sleep_before_retry(deadline)) give_up(); }
#pragma once

#include <chrono>
#include <cstdint>
#include <random>

#include "kiln/base/deadline.h"

namespace kiln {

struct BackoffOptions {
  Clock::duration base = std::chrono::milliseconds(100);
  Clock::duration cap = std::chrono::seconds(5);
  int max_attempts = 0;  // 0 = bounded by the deadline only
};

class Backoff {
 public:
  explicit Backoff(BackoffOptions options);

  // The delay before the next retry: uniform in [base/2, min(cap, base·2^n)],
  // so synchronized clients spread out yet retries still grow.
  Clock::duration next_delay();

  // Sleeps for next_delay() (clipped to the deadline). Returns false without
  // sleeping if the attempts are used up or the deadline has passed.
  bool sleep_before_retry(Deadline deadline);

  int attempts() const { return attempts_; }

 private:
  BackoffOptions options_;
  int attempts_ = 0;
  std::minstd_rand rng_;
};

}  // namespace kiln
