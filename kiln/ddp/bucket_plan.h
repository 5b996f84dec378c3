// Which gradients share an allreduce bucket (c10d's compute_bucket_assignment_by_size).
// Pure arithmetic: no tensors, so it is tested and reused without LibTorch.
#pragma once

#include <cstddef>
#include <vector>

namespace kiln::ddp {

// Groups parameters, given in the order their gradients are expected to be
// ready (reverse registration order), into consecutive buckets: the first
// holds up to `first_cap` bytes (small, so communication starts early in
// backward), the others up to `cap`. A parameter larger than the cap gets a
// bucket of its own. Returns parameter indices per bucket.
// `break_before[i]` (optional) closes the bucket before parameter i even if
// it has room: used when measured ready times show a long gap there, so a
// finished gradient does not wait for one computed much later.
std::vector<std::vector<std::size_t>> plan_buckets(const std::vector<std::size_t>& bytes_in_ready_order,
                                                   std::size_t first_cap, std::size_t cap,
                                                   const std::vector<bool>& break_before = {});

// Note [Closing a bucket at a gap]: after the first backward, DDP knows when
// each gradient was ready. A bucket closes before a gradient that came
// `long_gap_s` or more after the previous one (its gradients would wait for
// a much later one), and, once it already holds `full_bytes`, at any gap
// over `short_gap_s`: a bucket that large is worth a collective of its own,
// and waiting leaves the link idle for the gap (the first layer's weight in
// row blocks ~10-20 ms apart, each a few MB, must leave block by block).
struct GapRule {
  double long_gap_s = 0;
  double short_gap_s = 0;
  std::size_t full_bytes = 0;
};

// break_before for plan_buckets (same bytes and caps) under `rule`, from the
// ready times (seconds, in ready order, non-decreasing).
std::vector<bool> breaks_at_gaps(const std::vector<std::size_t>& bytes_in_ready_order,
                                 const std::vector<double>& ready_s, std::size_t first_cap,
                                 std::size_t cap, const GapRule& rule);

}  // namespace kiln::ddp
