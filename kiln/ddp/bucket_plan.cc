#include "kiln/ddp/bucket_plan.h"

namespace kiln::ddp {

std::vector<std::vector<std::size_t>> plan_buckets(const std::vector<std::size_t>& bytes,
                                                   std::size_t first_cap, std::size_t cap,
                                                   const std::vector<bool>& break_before) {
  std::vector<std::vector<std::size_t>> buckets;
  std::size_t filled = 0;
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    std::size_t limit = buckets.size() <= 1 ? first_cap : cap;  // of the bucket being filled
    bool gap = i < break_before.size() && break_before[i];
    if (buckets.empty() || (filled > 0 && (filled + bytes[i] > limit || gap))) {
      buckets.emplace_back();
      filled = 0;
    }
    buckets.back().push_back(i);
    filled += bytes[i];
  }
  return buckets;
}

}  // namespace kiln::ddp
