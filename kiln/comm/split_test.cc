// split(color, key): sub-communicators with their own connections, ordered
// by (key, rank), usable alongside the parent without crosstalk.
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "kiln/comm/communicator.h"
#include "kiln/comm/testing/multiprocess.h"

namespace kiln::comm {
namespace {

TEST(Split, GroupsByColorOrdersByKeyAndOptsOut) {
  auto result = testing::run_ranks(5, [](Communicator& c) -> Status {
    // Ranks 0..3 split into evens and odds, each ordered by descending rank;
    // rank 4 opts out.
    int color = c.rank() == 4 ? -1 : c.rank() % 2;
    KILN_ASSIGN_OR_RETURN(auto sub, c.split(color, -c.rank()));
    if (c.rank() == 4) {
      if (sub != nullptr) return internal_error("opted-out rank got a communicator");
    } else {
      if (sub == nullptr) return internal_error("no sub-communicator");
      if (sub->size() != 2) return internal_error(fmt::format("sub size {}", sub->size()));
      int want_rank = c.rank() >= 2 ? 0 : 1;  // higher global rank first (key = -rank)
      if (sub->rank() != want_rank) return internal_error(fmt::format("sub rank {} want {}", sub->rank(), want_rank));
      // Parent and child operations interleave without mixing messages.
      std::int64_t mine = c.rank(), in_sub = c.rank();
      auto w_sub = sub->allreduce(&in_sub, 1, DataType::kInt64, ReduceOp::kSum);
      auto w_all = c.allreduce(&mine, 1, DataType::kInt64, ReduceOp::kSum);
      KILN_RETURN_IF_ERROR(w_sub->wait());
      KILN_RETURN_IF_ERROR(w_all->wait());
      std::int64_t want_sub = color == 0 ? 0 + 2 : 1 + 3;
      if (in_sub != want_sub) return internal_error(fmt::format("sub sum {} want {}", in_sub, want_sub));
      if (mine != 0 + 1 + 2 + 3 + 4) return internal_error(fmt::format("world sum {}", mine));
      return Status::ok();
    }
    std::int64_t mine = c.rank();
    KILN_RETURN_IF_ERROR(c.allreduce(&mine, 1, DataType::kInt64, ReduceOp::kSum)->wait());
    return mine == 10 ? Status::ok() : internal_error("world sum on the opted-out rank");
  });
  EXPECT_TRUE(result.ok()) << result.report;
}

}  // namespace
}  // namespace kiln::comm
