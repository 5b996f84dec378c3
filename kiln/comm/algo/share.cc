#include "kiln/comm/algo/share.h"

#include <algorithm>

namespace kiln::comm::algo {

void reduce_share_blocked(char* stage, const std::vector<const char*>& src,
                          const std::vector<char*>& dst, std::size_t count, DataType t,
                          ReduceOp op) {
  const int n = static_cast<int>(src.size());
  const std::size_t es = dtype_size(t);
  const bool wide = accumulates_in_float32(t, op);
  const std::size_t per_block = kShareBlockBytes / (wide ? sizeof(float) : es);
  auto* acc = reinterpret_cast<float*>(stage);
  auto* next = reinterpret_cast<float*>(stage + kShareBlockBytes);
  char* narrow = stage + 2 * kShareBlockBytes;
  for (std::size_t i = 0; i < count; i += per_block) {
    const std::size_t k = std::min(per_block, count - i);
    const char* out = stage;
    if (wide) {
      widen_to_float32(t, src[0] + i * es, acc, k);
      for (int j = 1; j < n; ++j) {
        widen_to_float32(t, src[j] + i * es, next, k);
        reduce(DataType::kFloat32, op, acc, acc, next, k);
      }
      if (op == ReduceOp::kAvg) finish_avg(DataType::kFloat32, acc, k, n);
      narrow_from_float32(t, acc, narrow, k);
      out = narrow;
    } else {
      reduce(t, op, stage, src[0] + i * es, src[1] + i * es, k);
      for (int j = 2; j < n; ++j) reduce(t, op, stage, stage, src[j] + i * es, k);
      if (op == ReduceOp::kAvg) finish_avg(t, stage, k, n);
    }
    for (char* d : dst) copy_streaming(d + i * es, out, k * es, /*fence=*/false);
  }
}

}  // namespace kiln::comm::algo
