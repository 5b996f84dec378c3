#include "kiln/base/backoff.h"

#include <algorithm>
#include <thread>

namespace kiln {

Backoff::Backoff(BackoffOptions options)
    : options_(options),
      rng_(static_cast<std::uint32_t>(Clock::now().time_since_epoch().count())) {}

Clock::duration Backoff::next_delay() {
  int n = std::min(attempts_, 30);
  auto grown = options_.base * (std::int64_t{1} << n);
  auto upper = std::min(options_.cap, grown);
  auto lower = std::min(options_.base / 2, upper);
  std::uniform_int_distribution<std::int64_t> pick(lower.count(), upper.count());
  ++attempts_;
  return Clock::duration(pick(rng_));
}

bool Backoff::sleep_before_retry(Deadline deadline) {
  if (options_.max_attempts > 0 && attempts_ >= options_.max_attempts) return false;
  if (deadline.expired()) return false;
  auto d = std::min(next_delay(), deadline.remaining());
  std::this_thread::sleep_for(d);
  return true;
}

}  // namespace kiln
