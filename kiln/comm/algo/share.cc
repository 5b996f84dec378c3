#include "kiln/comm/algo/share.h"

#include <algorithm>

#include <fmt/format.h>

#include "kiln/base/logging.h"

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

OfferHeader OfferHeader::of(std::uint32_t magic, const AllreduceArgs& a) {
  return {magic, static_cast<std::uint32_t>(a.dtype) << 8 | static_cast<std::uint32_t>(a.op),
          a.count};
}

Status OfferHeader::check(const char* what, int rank, const OfferHeader& mine) const {
  if (magic != mine.magic) {
    return invalid_argument(fmt::format(
        "{}: rank {} of the group sent {:#x} where this rank's offer starts {:#x} (the ranks "
        "issued different operations)",
        what, rank, magic, mine.magic));
  }
  if (operation != mine.operation) {
    return invalid_argument(fmt::format(
        "{}: rank {} of the group offered {} {} where this rank has {} {} (the ranks issued "
        "different operations)",
        what, rank, dtype_name(static_cast<DataType>(operation >> 8)),
        reduce_op_name(static_cast<ReduceOp>(operation & 0xff)),
        dtype_name(static_cast<DataType>(mine.operation >> 8)),
        reduce_op_name(static_cast<ReduceOp>(mine.operation & 0xff))));
  }
  if (count != mine.count) {
    return invalid_argument(fmt::format(
        "{}: rank {} of the group offered {} elements where this rank has {} (the ranks issued "
        "different operations or counts)",
        what, rank, count, mine.count));
  }
  return Status::ok();
}

Result<bool> every_rank_could(const Env& env, const Status& mine, std::atomic<bool>& warned,
                              const char* fallback) {
  std::vector<std::uint8_t> all;
  KILN_RETURN_IF_ERROR(exchange(env, static_cast<std::uint8_t>(mine.is_ok() ? 1 : 0), all));
  if (!mine.is_ok() && !warned.exchange(true)) {
    log()->warn("{}: {} (said once): {}", *env.what, fallback, mine.to_string());
  }
  return std::all_of(all.begin(), all.end(), [](std::uint8_t c) { return c == 1; });
}

}  // namespace kiln::comm::algo
