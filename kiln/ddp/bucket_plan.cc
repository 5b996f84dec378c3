#include "kiln/ddp/bucket_plan.h"

#include <functional>

namespace kiln::ddp {
namespace {

// The bucket filling both functions share: `close_early(i, filled)` says
// whether to close a bucket holding `filled` bytes before parameter i even
// though it has room. Calls `close_early` only where that is the question.
std::vector<std::vector<std::size_t>> fill_buckets(
    const std::vector<std::size_t>& bytes, std::size_t first_cap, std::size_t cap,
    const std::function<bool(std::size_t, std::size_t)>& close_early) {
  std::vector<std::vector<std::size_t>> buckets;
  std::size_t filled = 0;
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    std::size_t limit = buckets.size() <= 1 ? first_cap : cap;  // of the bucket being filled
    if (buckets.empty() || (filled > 0 && (filled + bytes[i] > limit || close_early(i, filled)))) {
      buckets.emplace_back();
      filled = 0;
    }
    buckets.back().push_back(i);
    filled += bytes[i];
  }
  return buckets;
}

}  // namespace

std::vector<std::vector<std::size_t>> plan_buckets(const std::vector<std::size_t>& bytes,
                                                   std::size_t first_cap, std::size_t cap,
                                                   const std::vector<bool>& break_before) {
  return fill_buckets(bytes, first_cap, cap, [&](std::size_t i, std::size_t) {
    return i < break_before.size() && break_before[i];
  });
}

std::vector<bool> breaks_at_gaps(const std::vector<std::size_t>& bytes, const std::vector<double>& ready_s,
                                 std::size_t first_cap, std::size_t cap, const GapRule& rule) {
  std::vector<bool> breaks(bytes.size(), false);
  fill_buckets(bytes, first_cap, cap, [&](std::size_t i, std::size_t filled) {
    const double gap = i < ready_s.size() ? ready_s[i] - ready_s[i - 1] : 0;
    breaks[i] = gap > rule.long_gap_s || (filled >= rule.full_bytes && gap > rule.short_gap_s);
    return breaks[i];
  });
  return breaks;
}

}  // namespace kiln::ddp
