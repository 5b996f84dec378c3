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

}  // namespace kiln::ddp
